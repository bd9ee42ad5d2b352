//! The Flux transformer against diffusers' `FluxTransformer2DModel`: same weights, same inputs,
//! outputs within 1e-4 (fp32), on the tiny configs of diffusers' Flux tests with and without
//! guidance embeddings. Fixtures from `fixtures/make_flux_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::flux::{FluxInputs, FluxTransformer2DModel, FluxTransformerConfig};
use loraflow_trainer::lora::{LayerMut, LoraLayers, NetworkConfig, apply_lora};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

/// The model of `fixtures/flux/<name>`, built from its config and loaded from its weights.
fn model(name: &str, device: &Device) -> FluxTransformer2DModel {
    let config =
        FluxTransformerConfig::from_file(fixture(&format!("flux/{name}/config.json"))).unwrap();
    config
        .init(device)
        .load_diffusers(fixture(&format!(
            "flux/{name}/diffusion_pytorch_model.safetensors"
        )))
        .unwrap()
}

/// The recorded inputs of `fixtures/flux/<name>/io.safetensors` and diffusers' output.
fn io(name: &str, device: &Device) -> (FluxInputs, HostTensor) {
    let file = TensorFile::open(fixture(&format!("flux/{name}/io.safetensors"))).unwrap();
    let read = |key: &str| file.read(key).unwrap();
    let guidance = file
        .names()
        .iter()
        .any(|n| n == "guidance")
        .then(|| read("guidance").to_tensor::<1>(device));
    let inputs = FluxInputs {
        hidden_states: read("hidden_states").to_tensor(device),
        encoder_hidden_states: read("encoder_hidden_states").to_tensor(device),
        pooled_projections: read("pooled_projections").to_tensor(device),
        timestep: read("timestep").to_tensor(device),
        img_ids: read("img_ids"),
        txt_ids: read("txt_ids"),
        guidance,
    };
    (inputs, read("out"))
}

fn parity(name: &str) {
    let device = Device::flex();
    let model = model(name, &device);
    let (inputs, expected) = io(name, &device);
    let out = HostTensor::from_tensor(model.forward(inputs).unwrap());
    let err = max_abs_diff(&out, &expected);
    println!(
        "flux {name}: max abs error {err:e} (output scale {})",
        max_abs(&expected)
    );
    assert!(err <= 1e-4, "{name}: max abs error {err} > 1e-4");
}

#[test]
fn schnell_transformer_matches_diffusers() {
    parity("schnell");
}

#[test]
fn dev_transformer_with_guidance_matches_diffusers() {
    parity("dev");
}

fn output_moved_by(name: &str, change: impl FnOnce(&mut FluxInputs)) -> f32 {
    let device = Device::flex();
    let model = model(name, &device);
    let (mut inputs, expected) = io(name, &device);
    change(&mut inputs);
    let out = HostTensor::from_tensor(model.forward(inputs).unwrap());
    max_abs_diff(&out, &expected)
}

#[test]
fn guidance_positions_and_pooled_text_change_the_output() {
    // Guards against a model that ignores a conditioning input and still lands near the
    // reference because its contribution is small.
    let moved = output_moved_by("dev", |i| {
        i.guidance = i.guidance.take().map(|g| g.add_scalar(2.0));
    });
    assert!(moved > 1e-3, "guidance had no visible effect ({moved})");
    let moved = output_moved_by("schnell", |i| {
        let mut ids = i.img_ids.clone();
        // Transpose the grid's rows and columns: the same tokens at other positions.
        for p in ids.data.chunks_mut(3) {
            p.swap(1, 2);
        }
        i.img_ids = ids;
    });
    assert!(
        moved > 1e-3,
        "image positions had no visible effect ({moved})"
    );
    let moved = output_moved_by("schnell", |i| {
        i.pooled_projections = i.pooled_projections.clone().mul_scalar(-1.0);
    });
    assert!(moved > 1e-3, "pooled text had no visible effect ({moved})");
}

#[test]
fn inputs_that_do_not_fit_the_model_are_refused_by_name() {
    let device = Device::flex();
    let dev = model("dev", &device);
    let (inputs, _) = io("dev", &device);

    let mut no_guidance = inputs.clone();
    no_guidance.guidance = None;
    let err = dev.forward(no_guidance).unwrap_err().to_string();
    assert!(
        err.contains("`guidance`") && err.contains("FLUX.1-dev"),
        "{err}"
    );

    let schnell = model("schnell", &device);
    let err = schnell.forward(inputs.clone()).unwrap_err().to_string();
    assert!(
        err.contains("`guidance`") && err.contains("schnell"),
        "{err}"
    );

    let mut narrow = inputs.clone();
    narrow.encoder_hidden_states = narrow.encoder_hidden_states.narrow(2, 0, 16);
    let err = dev.forward(narrow).unwrap_err().to_string();
    assert!(
        err.contains("encoder_hidden_states") && err.contains("width 16") && err.contains("(32)"),
        "{err}"
    );

    let mut short_ids = inputs.clone();
    short_ids.img_ids = HostTensor::new(vec![2, 3], vec![0.0; 6]);
    let err = dev.forward(short_ids).unwrap_err().to_string();
    assert!(
        err.contains("img_ids") && err.contains("2 positions") && err.contains("(24)"),
        "{err}"
    );

    let mut two_axes = inputs.clone();
    two_axes.txt_ids = HostTensor::new(vec![5, 2], vec![0.0; 10]);
    let err = dev.forward(two_axes).unwrap_err().to_string();
    assert!(
        err.contains("txt_ids") && err.contains("[tokens, 3]"),
        "{err}"
    );

    let mut batch = inputs;
    batch.timestep = Tensor::<1>::zeros([3], &device);
    let err = dev.forward(batch).unwrap_err().to_string();
    assert!(err.contains("timestep") && err.contains("batch 3"), "{err}");
}

#[test]
fn every_tensor_of_the_diffusers_file_is_a_parameter() {
    let device = Device::flex();
    for name in ["schnell", "dev"] {
        let model = model(name, &device);
        let file = TensorFile::open(fixture(&format!(
            "flux/{name}/diffusion_pytorch_model.safetensors"
        )))
        .unwrap();
        let mut ours = model.diffusers_keys();
        let mut theirs = file.names();
        ours.sort();
        theirs.sort();
        assert!(
            ours.iter()
                .any(|k| k == "transformer_blocks.0.attn.norm_added_q.weight")
        );
        assert!(
            ours.iter()
                .any(|k| k == "single_transformer_blocks.0.proj_mlp.weight")
        );
        assert_eq!(
            ours.iter()
                .any(|k| k.starts_with("time_text_embed.guidance_embedder.")),
            name == "dev"
        );
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn every_linear_is_adaptable_under_its_diffusers_path() {
    let device = Device::flex();
    let mut model = model("dev", &device);
    let keys = model.diffusers_keys();
    let layers: Vec<String> = model.layers().into_iter().map(|(path, _)| path).collect();
    // Every linear weight of the file (2-D tensors) is one adaptable layer, and nothing else.
    let mut linear_weights: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_suffix(".weight"))
        .filter(|k| !k.contains(".norm_"))
        .map(str::to_string)
        .collect();
    let mut sorted = layers.clone();
    linear_weights.sort();
    sorted.sort();
    assert_eq!(sorted, linear_weights);
    for path in [
        "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.attn.add_k_proj",
        "transformer_blocks.0.ff_context.net.0.proj",
        "single_transformer_blocks.0.attn.to_q",
        "norm_out.linear",
    ] {
        assert!(layers.iter().any(|l| l == path), "{path} in {layers:?}");
    }
}

#[test]
fn adapters_on_diffusers_flux_targets_receive_gradients_through_every_block() {
    // The modules diffusers' Flux LoRA script adapts by default: attention q/k/v/out, the text
    // stream's added projections and both feed-forwards (the single blocks' q/k/v match too).
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
    let device = Device::flex().autodiff();
    let base = model("dev", &device);
    let (inputs, expected) = io("dev", &device);
    let network = NetworkConfig::new(4, 4.0).with_targets(&targets);
    let (mut lora, adapted) = apply_lora(base, &network, 18, &device).unwrap();
    assert_eq!(adapted.len(), 12 + 3, "{adapted:?}");
    assert!(
        adapted
            .iter()
            .any(|p| p == "single_transformer_blocks.0.attn.to_v")
    );

    // Fresh adapters (zero up factors) leave the output as it was.
    let out = lora.forward(inputs).unwrap();
    let err = max_abs_diff(&HostTensor::from_tensor(out.clone()), &expected);
    assert!(err <= 1e-4, "fresh adapters moved the output by {err}");

    let grads = out.square().mean().backward();
    for (path, layer) in lora.layers() {
        let LayerMut::Linear(linear) = layer else {
            panic!("{path} is not a linear");
        };
        match &linear.lora {
            Some(adapter) => {
                let up = adapter
                    .up
                    .grad(&grads)
                    .unwrap_or_else(|| panic!("{path}: no gradient"));
                let up = max_abs(&HostTensor::from_tensor(up));
                assert!(up > 0.0, "{path}: zero gradient on the up factor");
            }
            None => assert!(
                linear.weight.grad(&grads).is_none(),
                "{path}: the frozen base got a gradient"
            ),
        }
    }
}
