//! The SDXL UNet (added `text_time` conditioning) against diffusers: same weights, same inputs,
//! outputs within 1e-4 (fp32). Fixtures from `fixtures/make_sdxl_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::Device;
use common::sdxl::{pipeline_unet, unet_io as io};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::unet::{AddedConditions, UNetConfig};

#[test]
fn sdxl_pipeline_test_unet_matches_diffusers() {
    let device = Device::flex();
    let unet = pipeline_unet(&device);
    assert!(unet.has_added_conditioning());
    let io = io(&device);
    let out = unet
        .forward_added(io.sample, io.timesteps, io.context, Some(&io.added))
        .unwrap();
    let out = HostTensor::from_tensor(out);
    let err = max_abs_diff(&out, &io.out);
    println!(
        "sdxl pipeline unet: max abs error {err:e} (output scale {})",
        max_abs(&io.out)
    );
    assert!(err <= 1e-4, "max abs error {err} > 1e-4");
}

#[test]
fn the_added_conditioning_changes_the_output() {
    // Guards against a model that ignores text_embeds or time_ids and still lands near the
    // reference because their contribution is small.
    let device = Device::flex();
    let unet = pipeline_unet(&device);
    let io = io(&device);
    let shifted = AddedConditions {
        text_embeds: io.added.text_embeds.clone(),
        time_ids: io.added.time_ids.clone().add_scalar(64.0),
    };
    let out = unet
        .forward_added(io.sample, io.timesteps, io.context, Some(&shifted))
        .unwrap();
    let err = max_abs_diff(&HostTensor::from_tensor(out), &io.out);
    assert!(err > 1e-3, "time ids had no visible effect ({err})");
}

#[test]
fn missing_or_misshaped_added_conditions_are_refused() {
    let device = Device::flex();
    let unet = pipeline_unet(&device);
    let io = io(&device);
    let err = unet
        .forward_added(
            io.sample.clone(),
            io.timesteps.clone(),
            io.context.clone(),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("added_conditions"), "{err}");
    let narrow = AddedConditions {
        text_embeds: io.added.text_embeds.clone().narrow(1, 0, 16),
        time_ids: io.added.time_ids.clone(),
    };
    let err = unet
        .forward_added(io.sample, io.timesteps, io.context, Some(&narrow))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_embeds") && err.contains("width 16"),
        "{err}"
    );
    assert!(err.contains("(80)"), "{err}");
}

#[test]
fn every_tensor_of_the_diffusers_file_is_a_parameter() {
    let device = Device::flex();
    let unet = pipeline_unet(&device);
    let file = TensorFile::open(fixture(
        "sdxl/pipeline/unet/diffusion_pytorch_model.safetensors",
    ))
    .unwrap();
    let mut ours = unet.diffusers_keys();
    let mut theirs = file.names();
    ours.sort();
    theirs.sort();
    assert!(ours.iter().any(|k| k == "add_embedding.linear_1.weight"));
    assert_eq!(ours, theirs);
}

#[test]
fn sdxl_base_config_widths() {
    let config = UNetConfig::sdxl_base();
    let added = config.addition.unwrap();
    assert_eq!(added.projection_class_embeddings_input_dim, 2816);
    assert_eq!(added.text_embeds_dim(6), Some(1280));
    assert_eq!(config.time_embedding_dim, 1280);
}
