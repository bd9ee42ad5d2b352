//! End-to-end training on the tiny fixture UNet: the loss really goes down, only adapters
//! move, runs are reproducible from the seed, cancellation stops between steps, and gradient
//! accumulation averages like one big batch.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use loraflow_trainer::lora::{LoraLayers, NetworkConfig, apply_lora, load_kohya};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::NoiseSchedule;
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::train::dataset::LatentDataset;
use loraflow_trainer::train::lr::{LrSchedule, LrScheduleKind};
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss};
use loraflow_trainer::unet::{UNet2DConditionModel, UNetConfig};
use loraflow_trainer::{Error, NeverCancel, ProgressEvent, TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-train-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four "images": smooth latents (so there is structure to learn) and random text states.
fn dataset() -> LatentDataset {
    let mut rng = SeededRng::new(100, Stream::Noise);
    let mut latents = Vec::new();
    for i in 0..4 {
        for c in 0..4 {
            for y in 0..8 {
                for x in 0..8 {
                    let v = ((x as f32 + i as f32) * 0.7).sin() * ((y + c) as f32 * 0.5).cos();
                    latents.push(v);
                }
            }
        }
    }
    LatentDataset::new(
        HostTensor::new(vec![4, 4, 8, 8], latents),
        HostTensor::new(vec![4, 5, 12], rng.normal(4 * 5 * 12)),
    )
    .unwrap()
}

fn config(out: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(fixture("lora_step/config.json"), "in-memory", out, "tiny");
    c.model.unet_weights = Some(fixture("lora_step/diffusion_pytorch_model.safetensors"));
    c.network =
        NetworkConfig::new(4, 4.0).with_targets(&["to_q", "to_k", "to_v", "to_out.0", "conv1"]);
    c.optimizer.learning_rate = 1e-2;
    c.objective.min_snr_gamma = Some(5.0);
    c.objective.noise_offset = 0.05;
    c.batch_size = 2;
    c.epochs = 10;
    c.max_grad_norm = Some(1.0);
    c.seed = 7;
    c
}

/// Mean loss over fixed draws, so that models can be compared on the same noise.
fn eval_loss(unet: &UNet2DConditionModel, ds: &LatentDataset, device: &Device) -> f32 {
    let schedule = NoiseSchedule::stable_diffusion();
    let mut rng = SeededRng::new(1234, Stream::Noise);
    let mut total = 0.0;
    for _ in 0..8 {
        let (latents, context) = ds.batch(&[0, 1, 2, 3], device);
        let noise = StepNoise::sample(&mut rng, latents.dims(), 1000);
        let loss = diffusion_loss(
            unet,
            &schedule,
            &Objective::default(),
            latents,
            context,
            &noise,
        );
        total += loss.into_scalar::<f32>();
    }
    total / 8.0
}

fn base(device: &Device) -> UNet2DConditionModel {
    UNetConfig::from_file(fixture("lora_step/config.json"))
        .unwrap()
        .init(device)
        .load_diffusers(fixture("lora_step/diffusion_pytorch_model.safetensors"))
        .unwrap()
}

#[test]
fn training_lowers_the_loss_and_writes_reproducible_files() {
    let out = tmp("e2e");
    let mut events = Vec::new();
    let trainer = Trainer::with_dataset(config(&out), dataset()).unwrap();
    assert_eq!(trainer.plan(), (2, 20));
    let result = trainer
        .run(&mut |e: ProgressEvent| events.push(e), &NeverCancel)
        .unwrap();
    assert_eq!(result.steps, 20);
    assert_eq!(result.losses.len(), 20);
    assert!(result.losses.iter().all(|l| l.is_finite()));
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Step(p) => Some(p.step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());
    assert!(result.config_file.exists());
    let saved: TrainConfig = TrainConfig::from_json_file(&result.config_file).unwrap();
    assert_eq!(saved.seed, 7);

    // The trained adapters lower the loss of the frozen base on the same draws.
    let device = Device::flex();
    let ds = dataset();
    let before = eval_loss(&base(&device), &ds, &device);
    let mut trained = base(&device);
    let loaded = load_kohya(&mut trained, &result.lora, &device).unwrap();
    assert_eq!(loaded.modules, result.adapted_modules);
    let after = eval_loss(&trained, &ds, &device);
    println!("eval loss {before} -> {after}");
    assert!(
        after < before * 0.95,
        "loss did not go down: {before} -> {after}"
    );
    let meta = TensorFile::open(&result.lora).unwrap().metadata();
    assert_eq!(meta["ss_steps"], "20");
    assert_eq!(meta["ss_seed"], "7");

    // Same seed, same file contents.
    let out2 = tmp("e2e-again");
    let again = Trainer::with_dataset(config(&out2), dataset())
        .unwrap()
        .run(&mut |_| {}, &NeverCancel)
        .unwrap();
    assert_eq!(again.losses, result.losses);
    let (a, b) = (
        TensorFile::open(&result.lora).unwrap(),
        TensorFile::open(&again.lora).unwrap(),
    );
    for name in a.names() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

#[test]
fn only_adapters_change_and_epochs_are_saved() {
    let out = tmp("frozen");
    let mut c = config(&out);
    c.epochs = 2;
    c.output.save_every_n_epochs = Some(1);
    c.output.peft = true;
    c.lr_schedule = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 1,
    };
    let mut lrs = Vec::new();
    let result = Trainer::with_dataset(c, dataset())
        .unwrap()
        .run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e {
                    lrs.push(p.learning_rate)
                }
            },
            &NeverCancel,
        )
        .unwrap();
    assert_eq!(lrs.len(), 4);
    assert_eq!(lrs[0], 0.0, "warm-up starts at zero");
    assert!(
        lrs[1] > lrs[2] && lrs[2] > lrs[3] && lrs[3] > 0.0,
        "{lrs:?}"
    );
    let names: Vec<_> = result
        .saved
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["tiny-000001.safetensors", "tiny.safetensors"]);
    assert!(result.peft.as_ref().unwrap().exists());
    assert_eq!(result.saved[0].sha256.len(), 64);

    // Merging the trained LoRA into the base changes exactly the adapted weights.
    let device = Device::flex();
    let mut merged = base(&device);
    load_kohya(&mut merged, &result.lora, &device).unwrap();
    loraflow_trainer::lora::merge_lora(&mut merged);
    let original =
        TensorFile::open(fixture("lora_step/diffusion_pytorch_model.safetensors")).unwrap();
    let dir = tmp("frozen-merged");
    let changed: Vec<String> = merged
        .diffusers_keys()
        .into_iter()
        .zip(merged_weights(&merged, &dir))
        .filter(|(k, t)| max_abs_diff(&original.read(k).unwrap(), t) > 0.0)
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<String> = result
        .adapted_modules
        .iter()
        .map(|m| format!("{m}.weight"))
        .collect();
    assert_eq!(changed, expected);
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// The model's weights in diffusers layout, in `diffusers_keys` order.
fn merged_weights(unet: &UNet2DConditionModel, _dir: &Path) -> Vec<HostTensor> {
    struct Collect(Vec<HostTensor>, Vec<(String, String)>);
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, n: &str, c: &str) {
            self.1.push((n.into(), c.into()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let t = HostTensor::from_tensor(p.val());
            let linear =
                matches!(self.1.last(), Some((n, c)) if n == "weight" && c == "Struct:LoraLinear");
            self.0.push(if linear { t.transposed() } else { t });
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    unet.visit(&mut c);
    c.0
}

#[test]
fn cancellation_stops_between_steps() {
    let out = tmp("cancel");
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let err = Trainer::with_dataset(config(&out), dataset())
        .unwrap()
        .run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e
                    && p.step == 3
                {
                    flag.store(true, Ordering::Relaxed);
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 3 }),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn accumulated_gradients_equal_the_full_batch() {
    // The mean of per-sample losses over two micro-batches of one is the loss of the batch of
    // two, so averaged accumulated gradients must equal the batch gradients.
    let device = Device::flex().autodiff();
    let (unet, _) = apply_lora(base(&device), &NetworkConfig::new(4, 4.0), 1, &device).unwrap();
    let mut unet = unet;
    // Non-zero up factors so that every factor gets a gradient.
    let mut rng = SeededRng::new(2, Stream::Noise);
    for (p, mut l) in unet.layers() {
        let Some((d, u, a)) = l.factors() else {
            continue;
        };
        let u = HostTensor::new(u.shape.clone(), rng.normal(u.data.len()));
        l.set_factors(&p, d, u, a, &device).unwrap();
    }
    let ds = dataset();
    let schedule = NoiseSchedule::stable_diffusion();
    let objective = Objective {
        min_snr_gamma: Some(5.0),
        ..Objective::default()
    };
    let noise = StepNoise::sample(&mut SeededRng::new(3, Stream::Noise), [2, 4, 8, 8], 1000);
    let (l, c) = ds.batch(&[0, 1], &device);
    let full = diffusion_loss(&unet, &schedule, &objective, l, c, &noise);
    let full = GradientsParams::from_grads(full.backward(), &unet);

    let mut acc = burn::optim::GradientsAccumulator::new();
    for i in 0..2 {
        let part = StepNoise {
            timesteps: vec![noise.timesteps[i]],
            noise: HostTensor::new(
                vec![1, 4, 8, 8],
                noise.noise.data[i * 256..(i + 1) * 256].to_vec(),
            ),
            offset: HostTensor::new(
                vec![1, 4, 1, 1],
                noise.offset.data[i * 4..(i + 1) * 4].to_vec(),
            ),
        };
        let (l, c) = ds.batch(&[i], &device);
        let loss = diffusion_loss(&unet, &schedule, &objective, l, c, &part);
        acc.accumulate(&unet, GradientsParams::from_grads(loss.backward(), &unet));
    }
    let mut summed = acc.grads();
    loraflow_trainer::train::optim::scale_grads(&unet, &mut summed, 0.5);
    let mut checked = 0;
    for (_, layer) in unet.layers() {
        if let loraflow_trainer::lora::LayerMut::Linear(lin) = layer
            && let Some(a) = lin.lora.as_ref()
        {
            for id in [a.down.id, a.up.id] {
                let x = HostTensor::from_tensor(full.get::<2>(id).unwrap());
                let y = HostTensor::from_tensor(summed.get::<2>(id).unwrap());
                let scale = common::max_abs(&x);
                assert!(max_abs_diff(&x, &y) <= 1e-5 * scale.max(1e-6));
                checked += 1;
            }
        }
    }
    assert!(checked >= 16);
}

#[test]
fn dataset_files_and_shape_checks() {
    let out = tmp("dsfile");
    let ds = dataset();
    let path = out.join("data.safetensors");
    let (l, c) = ds.batch(&[0, 1, 2, 3], &Device::flex());
    tensor_file::write(
        &path,
        &[
            ("latents".into(), HostTensor::from_tensor(l)),
            (
                "encoder_hidden_states".into(),
                HostTensor::from_tensor(c.clone()),
            ),
        ],
        Default::default(),
        SaveDtype::F32,
    )
    .unwrap();
    assert_eq!(LatentDataset::open(&path).unwrap(), ds);

    // States of the wrong width for the UNet are refused before training starts.
    let wide = LatentDataset::new(
        HostTensor::new(vec![1, 4, 8, 8], vec![0.0; 256]),
        HostTensor::new(vec![1, 5, 16], vec![0.0; 80]),
    )
    .unwrap();
    let err = Trainer::with_dataset(config(&out), wide)
        .unwrap()
        .run(&mut |_| {}, &NeverCancel)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("width 16") && err.contains("width 12"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn gradient_checkpointing_gives_the_same_steps() {
    let run = |checkpointing: bool, name: &str| {
        let out = tmp(name);
        let mut c = config(&out);
        c.max_train_steps = Some(3);
        c.gradient_checkpointing = checkpointing;
        let r = Trainer::with_dataset(c, dataset())
            .unwrap()
            .run(&mut |_| {}, &NeverCancel)
            .unwrap();
        std::fs::remove_dir_all(&out).ok();
        r.losses
    };
    let plain = run(false, "ckpt-off");
    let checkpointed = run(true, "ckpt-on");
    for (a, b) in plain.iter().zip(&checkpointed) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "{plain:?} vs {checkpointed:?}"
        );
    }
}
