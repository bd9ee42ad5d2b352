//! FLUX.1-dev text to image against diffusers' `FluxPipeline` on the tiny fixture folder:
//! the σ schedule bit for bit (several step and token counts), and from the same initial
//! latents, 4 steps at 32×32 px with guidance 3.5, the final latents and the decoded image of
//! two prompts within 1e-4. Fixtures from `fixtures/make_flux_pipeline_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use loraflow_trainer::flux::{FluxModel, FluxPipeline, pack_latents};
use loraflow_trainer::sample::SampleSettings;
use loraflow_trainer::sample::scheduler::SamplerKind;
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

const PROMPTS: [&str; 2] = [
    "a red fox in the snow, oil painting",
    "an old lighthouse by the sea",
];

fn settings(prompt: &str) -> SampleSettings {
    SampleSettings {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        width: 32,
        height: 32,
        steps: 4,
        guidance_scale: 3.5,
        seed: 7,
        sampler: SamplerKind::Euler,
        clip_skip: 1,
    }
}

fn load() -> (FluxModel, Device, TensorFile) {
    let device = Device::flex();
    let model = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    let io = TensorFile::open(fixture("flux/pipeline_io.safetensors")).unwrap();
    (model, device, io)
}

#[test]
fn sigma_schedule_matches_flux_pipeline_exactly() {
    let (model, _, io) = load();
    let mut checked = 0;
    for name in io.names().into_iter().filter(|n| n.starts_with("sigmas.")) {
        let mut parts = name.split('.').skip(1);
        let steps: usize = parts.next().unwrap().parse().unwrap();
        let tokens: usize = parts.next().unwrap().parse().unwrap();
        let ours = model.config.scheduler.sigmas(steps, tokens).unwrap();
        let expected = io.read(&name).unwrap().data;
        assert_eq!(ours, expected, "σ for {steps} steps at {tokens} tokens");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} schedules in the fixture");
}

#[test]
fn sampling_matches_flux_pipeline() {
    let (model, device, io) = load();
    let pipeline = FluxPipeline::new(&model);
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let latents: Tensor<4> = io
            .read(&format!("sample.{i}.latents"))
            .unwrap()
            .to_tensor(&device);
        let out = pipeline
            .generate(&settings(prompt), Some(latents), &device)
            .unwrap();
        assert_eq!(out.sigmas, io.read("sigmas.4.64").unwrap().data);
        let packed = HostTensor::from_tensor(pack_latents(out.latents).unwrap());
        let image = HostTensor::from_tensor(out.image);
        let e_latents = max_abs_diff(&packed, &io.read(&format!("sample.{i}.final")).unwrap());
        let e_image = max_abs_diff(&image, &io.read(&format!("sample.{i}.image")).unwrap());
        println!("flux pipeline {prompt:?}: final latents off by {e_latents:e}, image {e_image:e}");
        assert!(
            e_latents <= 1e-4,
            "final latents of {prompt:?} off by {e_latents}"
        );
        assert!(e_image <= 1e-4, "image of {prompt:?} off by {e_image}");
    }
}

#[test]
fn rendering_is_seeded_and_prompt_dependent() {
    let (model, device, _) = load();
    let pipeline = FluxPipeline::new(&model);
    let a = pipeline.render(&settings(PROMPTS[0]), &device).unwrap();
    let again = pipeline.render(&settings(PROMPTS[0]), &device).unwrap();
    assert_eq!((a.width, a.height), (32, 32));
    assert_eq!(a, again);
    let other = pipeline.render(&settings(PROMPTS[1]), &device).unwrap();
    assert_ne!(a.pixels, other.pixels);
    let reseeded = pipeline
        .render(
            &SampleSettings {
                seed: 8,
                ..settings(PROMPTS[0])
            },
            &device,
        )
        .unwrap();
    assert_ne!(a.pixels, reseeded.pixels);
}

#[test]
fn bad_settings_are_refused_by_field() {
    let (model, device, _) = load();
    let pipeline = FluxPipeline::new(&model);
    let cases = [
        (
            "width",
            SampleSettings {
                width: 30,
                ..settings("x")
            },
        ),
        (
            "height",
            SampleSettings {
                height: 0,
                ..settings("x")
            },
        ),
        (
            "width",
            SampleSettings {
                width: 8192,
                ..settings("x")
            },
        ),
        (
            "steps",
            SampleSettings {
                steps: 0,
                ..settings("x")
            },
        ),
        (
            "steps",
            SampleSettings {
                steps: 5000,
                ..settings("x")
            },
        ),
        (
            "guidance_scale",
            SampleSettings {
                guidance_scale: -1.0,
                ..settings("x")
            },
        ),
        (
            "guidance_scale",
            SampleSettings {
                guidance_scale: f64::NAN,
                ..settings("x")
            },
        ),
        (
            "clip_skip",
            SampleSettings {
                clip_skip: 2,
                ..settings("x")
            },
        ),
    ];
    for (field, s) in cases {
        let e = pipeline.render(&s, &device).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    let wrong = Tensor::<4>::zeros([1, 1, 8, 8], &device);
    let e = pipeline
        .generate(&settings("x"), Some(wrong), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`latents`"), "{e}");
}
