//! `model.base_weights = "bf16"`: the frozen UNet held in bfloat16 while adapters, gradients and
//! optimiser state stay fp32. Training steps on the tiny SDXL fixture UNet take nearly the
//! losses and adapter updates of fp32 ones; the `Trainer` trains SDXL with it to a LoRA file
//! that loads; bad values are refused naming the field.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{DType, Device, FloatDType};
use common::fixture;
use common::sdxl::{forward, pipeline_unet, unet_io};
use image::{Rgb, RgbImage};
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::lora::{LayerMut, LoraLayers, NetworkConfig, apply_lora, store_base_weights};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::NoiseSchedule;
use loraflow_trainer::tensor_file::HostTensor;
use loraflow_trainer::train::config::BaseWeights;
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::train::step::{MicroBatch, Objective, StepNoise, optimizer_step};
use loraflow_trainer::unet::UNet2DConditionModel;
use loraflow_trainer::{NeverCancel, TrainConfig, Trainer};

/// Dtypes of the base weights and of the adapters' factors.
fn dtypes(unet: &mut UNet2DConditionModel) -> (Vec<DType>, Vec<DType>) {
    let mut base = Vec::new();
    let mut adapters = Vec::new();
    for (_, layer) in unet.layers() {
        match layer {
            LayerMut::Linear(l) => {
                base.push(l.weight.val().dtype());
                if let Some(a) = &l.lora {
                    adapters.extend([a.down.val().dtype(), a.up.val().dtype()]);
                }
            }
            LayerMut::Conv(c) => {
                base.push(c.weight.val().dtype());
                if let Some(a) = &c.lora {
                    adapters.extend([a.down.val().dtype(), a.up.val().dtype()]);
                }
            }
        }
    }
    (base, adapters)
}

/// Losses, gradient norms and the final adapter factors of three AdamW steps from the same
/// start on the same batches.
fn train(base: BaseWeights) -> (Vec<f32>, Vec<f64>, Vec<HostTensor>) {
    let device = Device::flex().autodiff();
    let mut unet = pipeline_unet(&device);
    if let Some(dtype) = base.float_dtype() {
        store_base_weights(&mut unet, dtype);
    }
    let network = NetworkConfig::new(4, 4.0);
    let (mut unet, adapted) = apply_lora(unet, &network, 3, &device).unwrap();
    assert!(!adapted.is_empty());
    let (bases, adapters) = dtypes(&mut unet);
    let want = match base {
        BaseWeights::F32 => DType::F32,
        BaseWeights::Bf16 => DType::BF16,
    };
    assert!(bases.iter().all(|d| *d == want), "{bases:?}");
    assert!(adapters.iter().all(|d| *d == DType::F32), "{adapters:?}");

    let io = unet_io(&device);
    let mut optim = AdamWSettings {
        learning_rate: 1e-2,
        ..AdamWSettings::default()
    }
    .build();
    let schedule = NoiseSchedule::stable_diffusion();
    let objective = Objective::default();
    let mut rng = SeededRng::new(7, Stream::Noise);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=3 {
        let noise = StepNoise::sample(&mut rng, io.sample.dims(), 1000);
        let mb = MicroBatch {
            latents: io.sample.clone(),
            context: io.context.clone(),
            added: Some(io.added.clone()),
            noise,
        };
        let (next, stats) = optimizer_step(
            unet,
            &mut optim,
            &schedule,
            &objective,
            vec![mb],
            1e-2,
            Some(1.0),
            step,
        )
        .unwrap();
        unet = next;
        losses.push(stats.loss);
        norms.push(stats.grad_norm);
    }
    let (bases, adapters) = dtypes(&mut unet);
    assert!(
        bases.iter().all(|d| *d == want),
        "after training: {bases:?}"
    );
    assert!(
        adapters.iter().all(|d| *d == DType::F32),
        "after training: {adapters:?}"
    );
    let factors = unet
        .layers()
        .into_iter()
        .filter_map(|(_, l)| l.factors())
        .flat_map(|(down, up, _)| [down, up])
        .collect();
    (losses, norms, factors)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn bf16_base_training_steps_match_fp32_ones_closely() {
    let (l32, n32, f32s) = train(BaseWeights::F32);
    let (l16, n16, f16s) = train(BaseWeights::Bf16);
    println!("fp32 losses {l32:?}, grad norms {n32:?}");
    println!("bf16 losses {l16:?}, grad norms {n16:?}");
    for (a, b) in l16.iter().zip(&l32) {
        let r = relative(f64::from(*a), f64::from(*b));
        assert!(r < 5e-3, "bf16 loss {a} vs fp32 {b}: {r:.2e} relative");
    }
    // Gradient norms are small on this 2–4-channel UNet, and the bf16 rounding of the base
    // products shows more in them than in the loss (up to about 10% measured).
    for (a, b) in n16.iter().zip(&n32) {
        let r = relative(*a, *b);
        assert!(
            r < 0.2,
            "bf16 gradient norm {a} vs fp32 {b}: {r:.2e} relative"
        );
    }
    // bf16 rounding is really in the computation (the base is not silently fp32)...
    assert!(l16.iter().zip(&l32).any(|(a, b)| a != b));
    // ...and the adapters move as they do in fp32: their factors are within 10% of the fp32
    // ones overall.
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in f16s.iter().zip(&f32s) {
        for (x, y) in a.data.iter().zip(&b.data) {
            diff += f64::from(x - y).powi(2);
            norm += f64::from(*y).powi(2);
        }
    }
    let r = (diff / norm).sqrt();
    println!("adapter factors: {r:.2e} relative difference");
    assert!(r < 0.1, "adapters differ by {r:.2e} relative");
}

#[test]
fn a_bf16_layer_returns_fp32_close_to_the_fp32_layer() {
    let device = Device::flex();
    let a = pipeline_unet(&device);
    let mut b = a.clone();
    store_base_weights(&mut b, FloatDType::BF16);
    let ya = forward(&a, &device);
    let yb = forward(&b, &device);
    assert_eq!(yb.dtype(), DType::F32);
    let scale = ya.clone().abs().max().into_scalar::<f32>();
    let err = (ya - yb).abs().max().into_scalar::<f32>();
    println!("bf16 base forward: max abs error {err:e} (output scale {scale})");
    assert!(
        err > 0.0 && err < 3e-2 * scale,
        "{err} against scale {scale}"
    );
}

#[test]
fn base_weights_parse_and_bad_values_name_the_field() {
    let json = |v: &str| {
        format!(
            r#"{{"model": {{"path": "m", "base_weights": {v}}}, "images": {{"dir": "d", "resolution": 64}}, "output": {{"dir": "o", "name": "n"}}}}"#
        )
    };
    let parse = |v: &str| serde_json::from_str::<TrainConfig>(&json(v));
    let c = parse("\"bf16\"").unwrap();
    assert_eq!(c.model.base_weights, BaseWeights::Bf16);
    assert_eq!(
        parse("\"f32\"").unwrap().model.base_weights,
        BaseWeights::F32
    );
    let c: TrainConfig = serde_json::from_str(
        r#"{"model": {"path": "m"}, "images": {"dir": "d", "resolution": 64}, "output": {"dir": "o", "name": "n"}}"#,
    )
    .unwrap();
    assert_eq!(c.model.base_weights, BaseWeights::F32, "default");
    // Saved configs read back.
    let again: TrainConfig =
        serde_json::from_str(&serde_json::to_string(&parse("\"bf16\"").unwrap()).unwrap()).unwrap();
    assert_eq!(again.model.base_weights, BaseWeights::Bf16);
    let err = parse("\"fp16\"").unwrap_err().to_string();
    assert!(err.contains("model.base_weights"), "{err}");
    assert!(err.contains("\"fp16\""), "{err}");
    assert!(err.contains("\"bf16\""), "{err}");
}

#[test]
fn the_trainer_trains_sdxl_with_a_bf16_base() {
    let root = std::env::temp_dir().join(format!("loraflow-bf16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data").join("10_circle");
    std::fs::create_dir_all(&data).unwrap();
    RgbImage::from_fn(32, 32, |x, y| {
        if (x as i32 - 16).pow(2) + (y as i32 - 16).pow(2) < 100 {
            Rgb([200, 40, 30])
        } else {
            Rgb([240, 240, 250])
        }
    })
    .save(data.join("a.png"))
    .unwrap();
    std::fs::write(data.join("a.txt"), "red circle").unwrap();
    let run = |base: BaseWeights, name: &str| {
        let images = ImageDatasetConfig::new(root.join("data"), 32);
        let mut c =
            TrainConfig::for_images(fixture("sdxl/pipeline"), images, root.join(name), name);
        c.model.base_weights = base;
        c.network = NetworkConfig::new(4, 4.0);
        c.optimizer.learning_rate = 1e-2;
        c.epochs = 1;
        c.seed = 2;
        Trainer::new(c)
            .unwrap()
            .run(&mut |_| {}, &NeverCancel)
            .unwrap()
    };
    let a = run(BaseWeights::F32, "f32");
    let b = run(BaseWeights::Bf16, "bf16");
    assert_eq!(a.steps, b.steps);
    println!("losses: fp32 {:?}, bf16 {:?}", a.losses, b.losses);
    for (x, y) in b.losses.iter().zip(&a.losses) {
        let r = relative(f64::from(*x), f64::from(*y));
        assert!(r < 5e-3, "bf16 loss {x} vs fp32 {y}");
    }
    // The saved config records the choice, and the LoRA file is an ordinary fp32 one.
    let saved = std::fs::read_to_string(&b.config_file).unwrap();
    assert!(saved.contains("\"base_weights\": \"bf16\""), "{saved}");
    let bytes = std::fs::read(&b.lora).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    assert!(names.iter().any(|n| n.starts_with("lora_unet_")));
    for name in names.iter().filter(|n| n.ends_with(".weight")) {
        assert_eq!(
            file.tensor(name).unwrap().dtype(),
            safetensors::Dtype::F32,
            "{name}"
        );
    }
    std::fs::remove_dir_all(&root).ok();
}
