//! The UNet against diffusers: same weights, same inputs, outputs within 1e-4 (fp32).
//!
//! Fixtures come from `fixtures/make_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::unet::UNetConfig;

fn check(dir: &str, weights: &str) {
    let device = Device::flex();
    let config = UNetConfig::from_file(fixture(&format!("{dir}/config.json"))).unwrap();
    let unet = config
        .init(&device)
        .load_diffusers(fixture(&format!("{dir}/{weights}")))
        .unwrap();
    let io = TensorFile::open(fixture(&format!("{dir}/io.safetensors"))).unwrap();
    let sample: Tensor<4> = io.read("sample").unwrap().to_tensor(&device);
    let context: Tensor<3> = io.read("encoder_hidden_states").unwrap().to_tensor(&device);
    let t: Vec<f32> = io
        .read_i64("timesteps")
        .unwrap()
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let n = t.len();
    let timesteps = Tensor::<1>::from_data(TensorData::new(t, [n]), &device);
    let out = HostTensor::from_tensor(unet.forward(sample, timesteps, context));
    let expected = io.read("out").unwrap();
    let err = max_abs_diff(&out, &expected);
    println!(
        "{dir}: max abs error {err:e} (output scale {})",
        max_abs(&expected)
    );
    assert!(err <= 1e-4, "{dir}: max abs error {err} > 1e-4");
}

#[test]
fn diffusers_lora_test_unet_fp16_weights() {
    check("unet_a", "diffusion_pytorch_model.fp16.safetensors");
}

#[test]
fn sd_pipeline_test_unet_odd_latent_size() {
    check("unet_b", "diffusion_pytorch_model.safetensors");
}

#[test]
fn sd2_shaped_unet_bf16_weights_linear_projections() {
    check("unet_c", "diffusion_pytorch_model.bf16.safetensors");
}

/// Regression: the comparison folded with `f32::max`, which returns the other operand when one
/// is NaN, so an output full of NaN compared as "max abs error 0" and passed every parity test.
#[test]
#[should_panic(expected = "is not finite: element 3")]
fn max_abs_diff_no_longer_skips_nan() {
    let expected = TensorFile::open(fixture("unet_b/io.safetensors"))
        .unwrap()
        .read("out")
        .unwrap();
    let mut broken = expected.clone();
    broken.data[3] = f32::NAN;
    // The old fold gave 0 here.
    let skipped = broken.data.iter().map(|x| x.abs()).fold(0.0, f32::max);
    assert!(skipped.is_finite());
    max_abs_diff(&broken, &expected);
}

/// The same bug in the scale helper (relative tolerances divide by it); infinities fail too.
#[test]
#[should_panic(expected = "is not finite: element 1")]
fn max_abs_no_longer_skips_nan() {
    max_abs(&HostTensor::new(vec![3], vec![0.5, f32::NAN, 1.0]));
}

#[test]
#[should_panic(expected = "is not finite: element 0")]
fn max_abs_diff_fails_on_infinity() {
    let t = HostTensor::new(vec![2], vec![f32::NEG_INFINITY, 1.0]);
    max_abs_diff(&HostTensor::new(vec![2], vec![0.0, 1.0]), &t);
}
