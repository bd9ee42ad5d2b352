//! A short SDXL LoRA run on the tiny fixture model learns: captions through both encoders,
//! sd-scripts' micro-conditioning, AdamW steps through the added conditioning; the loss on a
//! fixed batch falls, and only adapters move.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::fixture;
use loraflow_trainer::lora::{NetworkConfig, apply_lora, targets};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::{NoiseSchedule, Prediction};
use loraflow_trainer::sdxl::{SizeConditioning, StableDiffusionXl, time_ids_tensor};
use loraflow_trainer::train::optim::AdamWSettings;
use loraflow_trainer::train::step::{MicroBatch, Objective, StepNoise, optimizer_step};
use loraflow_trainer::unet::AddedConditions;

#[test]
fn sdxl_lora_steps_reduce_the_loss() {
    let device = Device::flex().autodiff();
    let model = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    let captions = [
        "a red circle on a white background",
        "a blue square, soft light",
    ];
    let ids = model.tokenizers.encode_batch(&captions);
    let text = model.text.encode(&ids, &device).unwrap();
    let (context, pooled) = (text.context.detach(), text.pooled.detach());
    let sizes = [
        SizeConditioning::for_bucket((48, 32), (32, 32), false),
        SizeConditioning::for_bucket((32, 32), (32, 32), true),
    ];
    let time_ids = time_ids_tensor(&sizes, &device);

    // Two 32×32 "images" as latents through the VAE (scaled by SDXL's 0.13025).
    let mut rng = SeededRng::new(3, Stream::Noise);
    let pixels = Tensor::<4>::from_data(
        TensorData::new(
            rng.normal(2 * 3 * 32 * 32)
                .into_iter()
                .map(|v| v.tanh())
                .collect::<Vec<f32>>(),
            [2, 3, 32, 32],
        ),
        &device,
    );
    let latents = model.vae.encode_latents(pixels).detach();
    let shape: [usize; 4] = latents.dims();
    let noise = StepNoise::sample(&mut rng, shape, 1000);

    // The tiny UNet has 2–4 channels per level: adapt its convolutions too (LoCon), so that
    // the adapters have enough capacity to show learning in a few steps.
    let all: Vec<&str> = targets::TRANSFORMER
        .iter()
        .chain(targets::CONV)
        .copied()
        .collect();
    let network = NetworkConfig::new(4, 4.0).with_targets(&all);
    let (mut unet, adapted) = apply_lora(model.unet.clone(), &network, 7, &device).unwrap();
    assert!(!adapted.is_empty());
    let schedule = NoiseSchedule::stable_diffusion();
    let objective = Objective {
        prediction: Prediction::Epsilon,
        noise_offset: 0.0,
        min_snr_gamma: None,
    };
    let settings = AdamWSettings {
        learning_rate: 3e-2,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    };
    let mut optim = settings.build();
    let mut losses = Vec::new();
    for step in 1..=20 {
        let mb = MicroBatch {
            latents: latents.clone(),
            context: context.clone(),
            added: Some(AddedConditions {
                text_embeds: pooled.clone(),
                time_ids: time_ids.clone(),
            }),
            noise: noise.clone(),
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
    }
    println!("sdxl losses: {losses:?}");
    let first = losses[0];
    let last = *losses.last().unwrap();
    // Same batch and noise every step: each step lowers the loss, by 15% or more in all.
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "a step raised the loss: {losses:?}"
    );
    assert!(last < 0.85 * first, "loss did not fall: {first} → {last}");
    // The base stays frozen: conv_in is what the model loaded.
    let base = model.unet.conv_in.weight.val().into_data();
    assert_eq!(unet.conv_in.weight.val().into_data(), base);
}
