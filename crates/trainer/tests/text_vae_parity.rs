//! The text encoder, tokenizer and VAE against transformers and diffusers: same weights, same
//! inputs; fixtures from `fixtures/make_pipeline_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::clip::{ClipTextConfig, ClipTokenizer};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::vae::VaeConfig;

fn ids(file: &TensorFile, key: &str, device: &Device) -> Tensor<2, Int> {
    let ids = file.read_i64(key).unwrap();
    let rows = ids.len() / 77;
    Tensor::from_data(TensorData::new(ids, [rows, 77]), device)
}

/// Row `i` of a stacked `[n, ...]` host tensor.
fn row(t: &HostTensor, i: usize) -> HostTensor {
    let item: usize = t.shape[1..].iter().product();
    HostTensor::new(
        t.shape[1..].to_vec(),
        t.data[i * item..(i + 1) * item].to_vec(),
    )
}

fn check_clip(prefix: &str, config: &str, weights: &str) {
    let device = Device::flex();
    let config = ClipTextConfig::from_file(fixture(config)).unwrap();
    let model = config
        .init(&device)
        .load_weights(&TensorFile::open(fixture(weights)).unwrap())
        .unwrap();
    let io = TensorFile::open(fixture("clip_io.safetensors")).unwrap();
    let input = ids(&io, &format!("{prefix}.input_ids"), &device);
    let (states, last) = model.hidden_states(input.clone());
    let expected_states = io.read(&format!("{prefix}.hidden_states")).unwrap();
    assert_eq!(states.len(), expected_states.shape[0]);
    for (i, s) in states.into_iter().enumerate() {
        let err = max_abs_diff(&HostTensor::from_tensor(s), &row(&expected_states, i));
        assert!(err <= 1e-4, "{prefix}: hidden state {i} off by {err}");
    }
    let expected_last = io.read(&format!("{prefix}.last_hidden_state")).unwrap();
    let err = max_abs_diff(&HostTensor::from_tensor(last), &expected_last);
    println!(
        "clip {prefix}: last hidden state max abs error {err:e} (scale {})",
        max_abs(&expected_last)
    );
    assert!(err <= 1e-4, "{prefix}: last hidden state off by {err}");

    // clip_skip = 1 is the last hidden state; 2 is the penultimate layer through the final norm.
    let skip1 = HostTensor::from_tensor(model.forward(input.clone(), 1).unwrap());
    assert!(max_abs_diff(&skip1, &expected_last) <= 1e-4);
    let n = expected_states.shape[0];
    let penultimate: Tensor<3> = row(&expected_states, n - 2).to_tensor(&device);
    let expected_skip2 =
        HostTensor::from_tensor(model.text_model.final_layer_norm.forward(penultimate));
    let skip2 = HostTensor::from_tensor(model.forward(input.clone(), 2).unwrap());
    assert!(max_abs_diff(&skip2, &expected_skip2) <= 1e-5);
    let err = model.forward(input, n).unwrap_err().to_string();
    assert!(err.contains("clip_skip"), "{err}");
}

#[test]
fn clip_text_model_quick_gelu_matches_transformers() {
    check_clip(
        "a",
        "pipeline/text_encoder/config.json",
        "pipeline/text_encoder/model.safetensors",
    );
}

#[test]
fn clip_text_model_gelu_matches_transformers() {
    check_clip("b", "clip_b_config.json", "clip_b.safetensors");
}

#[test]
fn tokenizer_matches_transformers_on_awkward_captions() {
    let tokenizer = ClipTokenizer::from_dir(fixture("pipeline/tokenizer")).unwrap();
    let text = std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let caption = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.encode_padded(caption),
            expected,
            "caption {caption:?}"
        );
    }
}

fn check_vae(prefix: &str, config: &str, weights: &str) {
    let device = Device::flex();
    let config = VaeConfig::from_file(fixture(config)).unwrap();
    let vae = config
        .init(&device)
        .load_weights(&TensorFile::open(fixture(weights)).unwrap())
        .unwrap();
    let io = TensorFile::open(fixture("vae_io.safetensors")).unwrap();
    let image: Tensor<4> = io
        .read(&format!("{prefix}.image"))
        .unwrap()
        .to_tensor(&device);
    let (mean, logvar) = vae.encode(image.clone());
    for (name, got) in [("mean", mean), ("logvar", logvar)] {
        let expected = io.read(&format!("{prefix}.{name}")).unwrap();
        let err = max_abs_diff(&HostTensor::from_tensor(got), &expected);
        println!("vae {prefix}: {name} max abs error {err:e}");
        assert!(err <= 1e-4, "{prefix}: {name} off by {err}");
    }
    let latents: Tensor<4> = io
        .read(&format!("{prefix}.latents"))
        .unwrap()
        .to_tensor(&device);
    let decoded = HostTensor::from_tensor(vae.decode(latents));
    let expected = io.read(&format!("{prefix}.decoded")).unwrap();
    let err = max_abs_diff(&decoded, &expected);
    println!(
        "vae {prefix}: decoded max abs error {err:e} (scale {})",
        max_abs(&expected)
    );
    assert!(err <= 1e-4, "{prefix}: decoded off by {err}");
    // encode_latents scales the mean.
    let scaled = HostTensor::from_tensor(vae.encode_latents(image));
    let mean = io.read(&format!("{prefix}.mean")).unwrap();
    let factor = config.scaling_factor as f32;
    let expected = HostTensor::new(
        mean.shape.clone(),
        mean.data.iter().map(|v| v * factor).collect(),
    );
    assert!(max_abs_diff(&scaled, &expected) <= 1e-5);
}

#[test]
fn vae_two_levels_matches_diffusers() {
    check_vae(
        "a",
        "pipeline/vae/config.json",
        "pipeline/vae/diffusion_pytorch_model.safetensors",
    );
}

#[test]
fn vae_three_levels_two_resnets_matches_diffusers() {
    check_vae(
        "b",
        "vae_b/config.json",
        "vae_b/diffusion_pytorch_model.safetensors",
    );
}
