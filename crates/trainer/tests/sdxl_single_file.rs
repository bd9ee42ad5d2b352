//! SDXL's SGM single-file layout (`sd_xl_base_1.0.safetensors`): a file built from the fixture
//! pipeline and checked against diffusers' single-file converters (in
//! `fixtures/make_sdxl_fixtures.py`) loads to the same model as the diffusers folder.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::sdxl::forward_host;
use common::{fixture, max_abs_diff};
use loraflow_trainer::sdxl::{SdxlIds, StableDiffusionXl};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

fn unet_out(model: &StableDiffusionXl, device: &Device) -> HostTensor {
    forward_host(&model.unet, device)
}

#[test]
fn sgm_single_file_loads_the_same_model_as_the_folder() {
    let device = Device::flex();
    let folder = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    let single = StableDiffusionXl::load_single_file(
        fixture("sdxl/single_file.safetensors"),
        &fixture("sdxl/pipeline"),
        &device,
    )
    .unwrap();
    assert_eq!(
        max_abs_diff(&unet_out(&single, &device), &unet_out(&folder, &device)),
        0.0
    );

    let ids = SdxlIds {
        ids: vec![folder.tokenizers.tokenizer.encode_padded("a dog, hat")],
        ids_2: vec![folder.tokenizers.tokenizer_2.encode_padded("a dog, hat")],
    };
    let (a, b) = (
        single.text.encode(&ids, &device).unwrap(),
        folder.text.encode(&ids, &device).unwrap(),
    );
    assert_eq!(
        max_abs_diff(
            &HostTensor::from_tensor(a.context),
            &HostTensor::from_tensor(b.context)
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &HostTensor::from_tensor(a.pooled),
            &HostTensor::from_tensor(b.pooled)
        ),
        0.0
    );

    let latents: Tensor<4> = TensorFile::open(fixture("sdxl/pipeline_io.safetensors"))
        .unwrap()
        .read("latents")
        .unwrap()
        .to_tensor(&device);
    assert_eq!(
        max_abs_diff(
            &HostTensor::from_tensor(single.vae.decode(latents.clone())),
            &HostTensor::from_tensor(folder.vae.decode(latents))
        ),
        0.0
    );
}

#[test]
fn an_sd1_single_file_is_refused_by_layout() {
    let device = Device::flex();
    let err = StableDiffusionXl::load_single_file(
        fixture("pipeline_ldm.safetensors"),
        &fixture("sdxl/pipeline"),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("conditioner.embedders.1.model."), "{err}");
}
