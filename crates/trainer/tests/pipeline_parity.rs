//! Text to image against diffusers' `StableDiffusionPipeline` (same initial latents, DDIM and
//! Euler, guidance 7.5), loading from the diffusers folder and from the LDM single-file layout,
//! and PNG output with text chunks.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use loraflow_trainer::Error;
use loraflow_trainer::clip::ids_tensor;
use loraflow_trainer::pipeline::{PipelineConfig, StableDiffusion};
use loraflow_trainer::sample::png::{read_png_text, write_png};
use loraflow_trainer::sample::scheduler::{SamplerKind, TimestepSpacing};
use loraflow_trainer::sample::{Pipeline, SampleSettings, png_text};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

fn settings(sampler: SamplerKind) -> SampleSettings {
    let io = TensorFile::open(fixture("pipeline_io.safetensors")).unwrap();
    let meta = io.metadata();
    SampleSettings {
        prompt: meta["prompt"].clone(),
        negative_prompt: meta["negative_prompt"].clone(),
        width: 32,
        height: 32,
        steps: 4,
        guidance_scale: 7.5,
        seed: 0,
        sampler,
        clip_skip: 1,
    }
}

/// `[1, 3, h, w]` → diffusers' `output_type="np"` layout `[1, h, w, 3]`.
fn to_hwc(image: Tensor<4>) -> HostTensor {
    HostTensor::from_tensor(image.permute([0, 2, 3, 1]))
}

fn check(model: &StableDiffusion, name: &str, sampler: SamplerKind) {
    let device = Device::flex();
    let io = TensorFile::open(fixture("pipeline_io.safetensors")).unwrap();
    let latents: Tensor<4> = io.read("latents").unwrap().to_tensor(&device);
    let (final_latents, image) = Pipeline::new(model)
        .generate(&settings(sampler), Some(latents), &device)
        .unwrap();
    let err_latents = max_abs_diff(
        &HostTensor::from_tensor(final_latents),
        &io.read(&format!("{name}.final_latents")).unwrap(),
    );
    let err = max_abs_diff(&to_hwc(image), &io.read(&format!("{name}.image")).unwrap());
    println!("{name}: final latents max abs error {err_latents:e}, image {err:e}");
    assert!(err <= 1e-3, "{name}: decoded image off by {err}");
}

#[test]
fn ddim_and_euler_match_diffusers_pipeline() {
    let mut model = StableDiffusion::load(fixture("pipeline"), None, &Device::flex()).unwrap();
    check(&model, "ddim", SamplerKind::Ddim);
    // The fixture's Euler scheduler was made with `from_config` of the DDIM one, which keeps
    // Euler's own default spacing (linspace) for keys the DDIM config left at their defaults.
    model.config.scheduler.timestep_spacing = Some(TimestepSpacing::Linspace);
    check(&model, "euler", SamplerKind::Euler);
}

#[test]
fn single_file_checkpoint_loads_the_same_model() {
    let device = Device::flex();
    let folder = StableDiffusion::load(fixture("pipeline"), None, &device).unwrap();
    let config = PipelineConfig::from_dir(fixture("pipeline")).unwrap();
    let single =
        StableDiffusion::load_single_file(fixture("pipeline_ldm.safetensors"), config, &device)
            .unwrap();

    // Same parameters give bit-identical outputs, component by component.
    let ids = ids_tensor(&[folder.tokenizer.encode_padded("a dog")], &device);
    let a = HostTensor::from_tensor(folder.text_encoder.forward(ids.clone(), 1).unwrap());
    let b = HostTensor::from_tensor(single.text_encoder.forward(ids, 1).unwrap());
    assert_eq!(a, b, "text encoder");
    let io = TensorFile::open(fixture("pipeline_io.safetensors")).unwrap();
    let latents: Tensor<4> = io.read("latents").unwrap().to_tensor(&device);
    assert_eq!(
        HostTensor::from_tensor(folder.vae.decode(latents.clone())),
        HostTensor::from_tensor(single.vae.decode(latents.clone())),
        "VAE decoder"
    );
    let image: Tensor<4> = folder.vae.decode(latents.clone());
    assert_eq!(
        HostTensor::from_tensor(folder.vae.encode(image.clone()).0),
        HostTensor::from_tensor(single.vae.encode(image).0),
        "VAE encoder"
    );
    check(&single, "ddim", SamplerKind::Ddim);

    // A single file without configs is refused with a hint.
    let err = StableDiffusion::load(fixture("pipeline_ldm.safetensors"), None, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("single-file checkpoint"), "{err}");
    // A diffusers weights file is not an LDM checkpoint.
    let err = StableDiffusion::load_single_file(
        fixture("pipeline/unet/diffusion_pytorch_model.safetensors"),
        PipelineConfig::from_dir(fixture("pipeline")).unwrap(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
}

#[test]
fn samples_are_seeded_pngs_with_prompt_and_seed_chunks() {
    let device = Device::flex();
    let model = StableDiffusion::load(fixture("pipeline"), None, &device).unwrap();
    let mut s = settings(SamplerKind::Ddim);
    s.prompt = "a café, naïve «style»".into();
    s.seed = 7;
    let pipeline = Pipeline::new(&model);
    let a = pipeline.render(&s, &device).unwrap();
    let b = pipeline.render(&s, &device).unwrap();
    assert_eq!(a, b, "same seed, same image");
    s.seed = 8;
    assert_ne!(pipeline.render(&s, &device).unwrap(), a, "another seed");
    s.seed = 7;

    let dir = std::env::temp_dir().join(format!("loraflow-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.png");
    write_png(&path, &a, &png_text(&s, "tiny", Some(("my_lora", 0.8)))).unwrap();
    let text = read_png_text(&path).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("prompt").as_deref(), Some("a café, naïve «style»"));
    assert_eq!(get("seed").as_deref(), Some("7"));
    let params = get("parameters").unwrap();
    assert!(
        params.contains("Seed: 7") && params.contains("<lora:my_lora:0.8>"),
        "{params}"
    );
    let decoded = image::open(&path).unwrap().to_rgb8();
    assert_eq!(decoded.as_raw(), &a.pixels);

    // Sizes the model cannot take are named.
    s.width = 30;
    let err = pipeline.render(&s, &device).unwrap_err().to_string();
    assert!(
        err.contains("`width`") && err.contains("multiple of 4"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
