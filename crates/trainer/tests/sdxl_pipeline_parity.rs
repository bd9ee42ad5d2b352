//! SDXL text to image against diffusers' `StableDiffusionXLPipeline` from the same initial
//! latents: Euler with a negative prompt, DDIM with the zeroed negative conditioning; decoded
//! images within 1e-3. Fixtures from `fixtures/make_sdxl_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use loraflow_trainer::sample::SampleSettings;
use loraflow_trainer::sample::scheduler::SamplerKind;
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::sample::SdxlPipeline;
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

fn settings(sampler: SamplerKind, negative: &str) -> SampleSettings {
    SampleSettings {
        prompt: "a red circle on a white background".into(),
        negative_prompt: negative.into(),
        width: 32,
        height: 32,
        steps: 4,
        guidance_scale: 5.0,
        seed: 0,
        sampler,
        clip_skip: 1,
    }
}

fn check(name: &str, sampler: SamplerKind, negative: &str) {
    let device = Device::flex();
    let model = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    let io = TensorFile::open(fixture("sdxl/pipeline_io.safetensors")).unwrap();
    assert_eq!(io.metadata()["negative_prompt"], "blurry, low quality");
    let latents: Tensor<4> = io.read("latents").unwrap().to_tensor(&device);
    let (_, image) = SdxlPipeline::new(&model)
        .generate(&settings(sampler, negative), Some(latents), &device)
        .unwrap();
    let image = HostTensor::from_tensor(image.permute([0, 2, 3, 1]));
    let expected = io.read(&format!("{name}.image")).unwrap();
    let err = max_abs_diff(&image, &expected);
    println!("sdxl pipeline {name}: max abs error {err:e}");
    assert!(err <= 1e-3, "{name}: image off by {err}");
}

#[test]
fn euler_with_negative_prompt_matches_diffusers() {
    check("euler", SamplerKind::Euler, "blurry, low quality");
}

#[test]
fn ddim_with_zeroed_negative_matches_diffusers() {
    check("ddim", SamplerKind::Ddim, "");
}

#[test]
fn clip_skip_is_refused_for_sdxl() {
    let device = Device::flex();
    let model = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    let mut s = settings(SamplerKind::Euler, "");
    s.clip_skip = 2;
    let err = SdxlPipeline::new(&model)
        .generate(&s, None, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip_skip"), "{err}");
}
