//! One LoRA training step against PyTorch + PEFT (fixture `fixtures/lora_step`): same base
//! weights, same initial adapters, same batch, noise and timesteps. The loss and every adapter
//! gradient must match within 1e-4 relative (fp32), for ε- and v-prediction with min-SNR-5,
//! and the adapters after global-norm clipping and one AdamW step must match torch's.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::HashMap;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::lora::{LayerMut, LoraLayers, load_kohya, load_peft};
use loraflow_trainer::schedule::{NoiseSchedule, Prediction};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::train::optim::{AdamWSettings, clip_global_norm};
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss};
use loraflow_trainer::unet::{UNet2DConditionModel, UNetConfig};

const ALPHA: f64 = 8.0;

fn model(device: &Device) -> UNet2DConditionModel {
    let config = UNetConfig::from_file(fixture("lora_step/config.json")).unwrap();
    config
        .init(device)
        .load_diffusers(fixture("lora_step/diffusion_pytorch_model.safetensors"))
        .unwrap()
        .no_grad()
}

fn peft_model(device: &Device) -> UNet2DConditionModel {
    let mut unet = model(device);
    let loaded = load_peft(
        &mut unet,
        &fixture("lora_step/lora_init.safetensors"),
        "unet",
        Some(ALPHA),
        device,
    )
    .unwrap();
    assert_eq!(loaded.modules.len(), 64, "every PEFT module found a layer");
    unet
}

struct Batch {
    latents: HostTensor,
    context: HostTensor,
    noise: StepNoise,
}

fn batch() -> Batch {
    let f = TensorFile::open(fixture("lora_step/batch.safetensors")).unwrap();
    Batch {
        latents: f.read("latents").unwrap(),
        context: f.read("encoder_hidden_states").unwrap(),
        noise: StepNoise {
            timesteps: f
                .read_i64("timesteps")
                .unwrap()
                .into_iter()
                .map(|t| t as usize)
                .collect(),
            noise: f.read("noise").unwrap(),
            offset: f.read("offset_noise").unwrap(),
        },
    }
}

fn objective(prediction: Prediction) -> Objective {
    Objective {
        prediction,
        noise_offset: 0.1,
        min_snr_gamma: Some(5.0),
    }
}

/// Adapter tensors in PEFT naming and layout, from `pick(layer) -> (A, B)` in burn layout.
fn peft_named(
    unet: &mut UNet2DConditionModel,
    mut pick: impl FnMut(&LayerMut<'_>) -> (HostTensor, HostTensor),
) -> HashMap<String, HostTensor> {
    let mut out = HashMap::new();
    for (path, layer) in unet.layers() {
        if !layer.has_adapter() {
            continue;
        }
        let (a, b) = pick(&layer);
        let (a, b) = match layer {
            LayerMut::Linear(_) => (a.transposed(), b.transposed()),
            LayerMut::Conv(_) => (a, b),
        };
        out.insert(format!("{path}.lora_A.weight"), a);
        out.insert(format!("{path}.lora_B.weight"), b);
    }
    out
}

fn compare(label: &str, ours: &HashMap<String, HostTensor>, expected: &TensorFile, prefix: &str) {
    assert_eq!(ours.len(), 128);
    let mut worst = 0.0f32;
    for (name, t) in ours {
        let e = expected.read(&format!("{prefix}{name}")).unwrap();
        let rel = max_abs_diff(t, &e) / max_abs(&e).max(1e-12);
        assert!(rel <= 1e-4, "{label} {name}: relative error {rel}");
        worst = worst.max(rel);
    }
    println!(
        "{label}: worst relative error {worst:e} over {} tensors",
        ours.len()
    );
}

#[test]
fn schedule_matches_diffusers() {
    let f = TensorFile::open(fixture("lora_step/batch.safetensors")).unwrap();
    let expected = f.read("alphas_cumprod").unwrap();
    let ours = NoiseSchedule::stable_diffusion();
    for (a, b) in ours.alphas_cumprod().iter().zip(&expected.data) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn loss_and_gradients_match_peft() {
    let device = Device::flex().autodiff();
    let expected = TensorFile::open(fixture("lora_step/expected.safetensors")).unwrap();
    let schedule = NoiseSchedule::stable_diffusion();
    let b = batch();
    for (prediction, key) in [
        (Prediction::Epsilon, "epsilon"),
        (Prediction::VPrediction, "v_prediction"),
    ] {
        let mut unet = peft_model(&device);
        let loss = diffusion_loss(
            &unet,
            &schedule,
            &objective(prediction),
            b.latents.to_tensor(&device),
            b.context.to_tensor(&device),
            &b.noise,
        );
        let ours = loss.clone().into_scalar::<f32>();
        let want = expected.read(&format!("{key}.loss")).unwrap().data[0];
        println!("{key}: loss {ours} vs {want}");
        assert!(
            (ours - want).abs() <= 1e-4 * want.abs(),
            "{key} loss {ours} vs {want}"
        );

        let grads = loss.backward();
        let named = peft_named(&mut unet, |layer| match layer {
            LayerMut::Linear(l) => {
                let a = l.lora.as_ref().unwrap();
                (
                    HostTensor::from_tensor(a.down.grad(&grads).unwrap()),
                    HostTensor::from_tensor(a.up.grad(&grads).unwrap()),
                )
            }
            LayerMut::Conv(c) => {
                let a = c.lora.as_ref().unwrap();
                (
                    HostTensor::from_tensor(a.down.grad(&grads).unwrap()),
                    HostTensor::from_tensor(a.up.grad(&grads).unwrap()),
                )
            }
        });
        compare(
            &format!("{key} gradients"),
            &named,
            &expected,
            &format!("{key}.grad."),
        );
        // The base is frozen: no gradient reaches it.
        assert!(unet.conv_in.weight.grad(&grads).is_none());
    }
}

#[test]
fn clipped_adamw_step_matches_torch() {
    let device = Device::flex().autodiff();
    let expected = TensorFile::open(fixture("lora_step/expected.safetensors")).unwrap();
    let max_norm = expected.read("epsilon.max_grad_norm").unwrap().data[0] as f64;
    let schedule = NoiseSchedule::stable_diffusion();
    let b = batch();
    let unet = peft_model(&device);
    let loss = diffusion_loss(
        &unet,
        &schedule,
        &objective(Prediction::Epsilon),
        b.latents.to_tensor(&device),
        b.context.to_tensor(&device),
        &b.noise,
    );
    let mut grads = GradientsParams::from_grads(loss.backward(), &unet);
    let norm = clip_global_norm(&unet, &mut grads, max_norm);
    assert!(
        (norm - 2.0 * max_norm).abs() <= 1e-4 * norm,
        "pre-clip norm {norm}"
    );
    let settings = AdamWSettings {
        learning_rate: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 1e-2,
    };
    let mut optim = settings.build();
    let mut unet = optim.step(1e-3, unet, grads);
    let named = peft_named(&mut unet, |layer| {
        let (down, up, _) = layer.factors().unwrap();
        // `factors` is already in PyTorch layout; undo the transpose `peft_named` applies.
        match layer {
            LayerMut::Linear(_) => (down.transposed(), up.transposed()),
            LayerMut::Conv(_) => (down, up),
        }
    });
    // Adam's first step moves each weight by lr·g/(|g| + ε) ≈ lr·sign(g), which amplifies the
    // rounding of near-zero gradients; the moved weights must agree within 0.2% of the step.
    let mut worst = 0.0f32;
    for (name, t) in &named {
        let e = expected
            .read(&format!("epsilon.after_step.{name}"))
            .unwrap();
        let err = max_abs_diff(t, &e);
        worst = worst.max(err);
        assert!(err <= 2e-6, "{name}: max abs error {err} after the step");
    }
    println!("after AdamW step: worst abs error {worst:e} (lr 1e-3)");
}

#[test]
fn kohya_file_from_diffusers_loads_to_the_same_adapters() {
    let device = Device::flex();
    let mut peft = peft_model(&device);
    let mut kohya = model(&device);
    let loaded = load_kohya(
        &mut kohya,
        &fixture("lora_step/lora_init_kohya.safetensors"),
        &device,
    )
    .unwrap();
    assert_eq!(loaded.modules.len(), 64);
    let b = batch();
    let run = |unet: &UNet2DConditionModel| {
        let t = Tensor::<1>::from_data([37.0f32, 801.0], &device);
        HostTensor::from_tensor(unet.forward(
            b.latents.to_tensor(&device),
            t,
            b.context.to_tensor(&device),
        ))
    };
    let (a, k) = (run(&peft), run(&kohya));
    assert!(max_abs_diff(&a, &k) <= 1e-6);
    // And the adapters really change the output.
    let plain = run(&model(&device));
    assert!(max_abs_diff(&a, &plain) > 1e-3);
    let pk: Vec<_> = peft.layers().iter().map(|(_, l)| l.factors()).collect();
    let kk: Vec<_> = kohya.layers().iter().map(|(_, l)| l.factors()).collect();
    assert_eq!(pk, kk);
}
