//! A short Flux LoRA run on the tiny dev-shaped fixture transformer learns: AdamW steps of
//! adapters on diffusers' Flux LoRA targets through the flow-matching objective (flux_shift σ,
//! guidance 1.0, 2×2 packing) lower the loss on a fixed batch, and only the adapters move.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::fixture;
use loraflow_trainer::flux::FluxTransformerConfig;
use loraflow_trainer::lora::{NetworkConfig, apply_lora};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::train::flow::{FlowNoise, FlowObjective};
use loraflow_trainer::train::flow_step::{FlowMicroBatch, FlowStepSettings, flow_optimizer_step};
use loraflow_trainer::train::optim::AdamWSettings;

#[test]
fn flux_lora_steps_reduce_the_flow_matching_loss() {
    let device = Device::flex().autodiff();
    let config =
        FluxTransformerConfig::from_file(fixture("flux/lora_step/transformer/config.json"))
            .unwrap();
    let base = config
        .init(&device)
        .load_diffusers(fixture(
            "flux/lora_step/transformer/diffusion_pytorch_model.safetensors",
        ))
        .unwrap();
    let targets = [
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    ];
    let network = NetworkConfig::new(4, 4.0).with_targets(&targets);
    let (mut model, adapted) = apply_lora(base, &network, 18, &device).unwrap();
    assert_eq!(adapted.len(), 15);
    let base_weight = model.x_embedder.weight.val().into_data();

    let mut rng = SeededRng::new(11, Stream::Noise);
    let tensor = |rng: &mut SeededRng, shape: Vec<usize>| {
        let n = shape.iter().product();
        TensorData::new(rng.normal(n), shape)
    };
    let latents = Tensor::<4>::from_data(tensor(&mut rng, vec![2, 4, 8, 8]), &device);
    let text = Tensor::<3>::from_data(tensor(&mut rng, vec![2, 5, 32]), &device);
    let pooled = Tensor::<2>::from_data(tensor(&mut rng, vec![2, 32]), &device);
    let objective = FlowObjective::default();
    let noise = FlowNoise::sample(&mut rng, [2, 4, 8, 8], &objective.timestep_sampling);

    let settings = AdamWSettings {
        learning_rate: 1e-2,
        weight_decay: 0.0,
        ..AdamWSettings::default()
    };
    let mut optim = settings.build();
    let mut losses = Vec::new();
    for step in 1..=15 {
        let mb = FlowMicroBatch {
            latents: latents.clone(),
            encoder_hidden_states: text.clone(),
            pooled_projections: pooled.clone(),
            noise: noise.clone(),
        };
        let (next, stats) = flow_optimizer_step(
            model,
            &mut optim,
            &objective,
            vec![mb],
            FlowStepSettings {
                learning_rate: 1e-2,
                max_grad_norm: Some(1.0),
                accumulation: 1,
                step,
            },
        )
        .unwrap();
        model = next;
        assert!(stats.grad_norm > 0.0);
        losses.push(stats.loss);
    }
    println!("flux losses: {losses:?}");
    let (first, last) = (losses[0], *losses.last().unwrap());
    // Same batch and draws every step: each step lowers the loss, by 10% or more in all.
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "a step raised the loss: {losses:?}"
    );
    assert!(last < 0.9 * first, "loss did not fall: {first} → {last}");
    // The base stays frozen.
    assert_eq!(model.x_embedder.weight.val().into_data(), base_weight);
}
