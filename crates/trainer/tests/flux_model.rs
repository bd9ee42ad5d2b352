//! A whole FLUX.1-dev diffusers folder: loading, `FluxPipeline.encode_prompt` parity (T5
//! states and CLIP pooled output of three prompts), LoRA files applied at a strength, and the
//! errors for folders that are not complete. Fixtures from
//! `fixtures/make_flux_pipeline_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use common::tiny::tmp;
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::flux::{
    FluxInputs, FluxModel, FluxTransformer2DModel, MAX_SEQUENCE_LENGTH, image_ids, is_flux_dir,
    text_ids,
};
use loraflow_trainer::sdxl::is_sdxl_dir;
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

const PROMPTS: [&str; 3] = [
    "a red fox in the snow, oil painting",
    "Café terrace at sunset (cinematic lighting, 8k)",
    "",
];

fn load() -> (FluxModel, Device) {
    let device = Device::flex();
    let model = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    (model, device)
}

fn ids(t: HostTensor) -> Vec<u32> {
    t.data.iter().map(|&v| v as u32).collect()
}

#[test]
fn the_fixture_folder_is_recognised_and_configured() {
    assert!(is_flux_dir(&fixture("flux/pipeline")));
    assert!(!is_flux_dir(&fixture("sdxl/pipeline")));
    assert!(!is_flux_dir(&fixture("pipeline")));
    // Both have a second text encoder; only the SDXL one is SDXL.
    assert!(is_sdxl_dir(&fixture("sdxl/pipeline")));
    assert!(!is_sdxl_dir(&fixture("flux/pipeline")));
    let (model, _) = load();
    let c = &model.config;
    assert_eq!(c.max_sequence_length, MAX_SEQUENCE_LENGTH);
    assert!(c.transformer.guidance_embeds);
    assert_eq!(c.vae.latent_channels, 1);
    assert_eq!(c.pixel_multiple(), 4);
    assert!(c.scheduler.use_dynamic_shifting);
    assert_eq!(c.scheduler.max_image_seq_len, 4096);
    let meta = TensorFile::open(fixture("flux/pipeline_io.safetensors"))
        .unwrap()
        .metadata();
    let prompts: Vec<String> = serde_json::from_str(&meta["encode_prompts"]).unwrap();
    assert_eq!(prompts, PROMPTS);
}

#[test]
fn encode_prompt_matches_flux_pipeline() {
    let (model, device) = load();
    let io = TensorFile::open(fixture("flux/pipeline_io.safetensors")).unwrap();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let key = |k: &str| io.read(&format!("encode.{i}.{k}")).unwrap();
        // The tokenizers first, so a mismatch is reported where it starts.
        assert_eq!(
            model.clip_tokenizer.encode_padded(prompt),
            ids(key("clip_ids")),
            "CLIP ids of {prompt:?}"
        );
        assert_eq!(
            model.t5_tokenizer.encode_padded(prompt, 512).unwrap(),
            ids(key("t5_ids")),
            "T5 ids of {prompt:?}"
        );
        let (states, pooled) = model.encode_prompt(prompt, &device).unwrap();
        let states = HostTensor::from_tensor(states);
        let pooled = HostTensor::from_tensor(pooled);
        let e_states = max_abs_diff(&states, &key("prompt_embeds"));
        let e_pooled = max_abs_diff(&pooled, &key("pooled"));
        println!("encode_prompt {prompt:?}: T5 states off by {e_states:e}, pooled {e_pooled:e}");
        assert!(e_states < 1e-4, "T5 states of {prompt:?} off by {e_states}");
        assert!(e_pooled < 1e-4, "pooled of {prompt:?} off by {e_pooled}");
    }
    // A batch gives each prompt's rows.
    let (states, pooled) = model.encode_prompts(&PROMPTS[..2], &device).unwrap();
    assert_eq!(states.dims(), [2, 512, 32]);
    let second = HostTensor::from_tensor(pooled.narrow(0, 1, 1));
    assert!(max_abs_diff(&second, &io.read("encode.1.pooled").unwrap()) < 1e-5);
}

/// The transformer's prediction on fixed inputs, to compare models.
fn predict(transformer: &FluxTransformer2DModel, device: &Device) -> HostTensor {
    let tokens = 16;
    let ramp = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * scale)
            .collect()
    };
    let out = transformer
        .forward(FluxInputs {
            hidden_states: Tensor::from_data(
                burn::tensor::TensorData::new(ramp(tokens * 4, 1.0), [1, tokens, 4]),
                device,
            ),
            encoder_hidden_states: Tensor::from_data(
                burn::tensor::TensorData::new(ramp(5 * 32, 0.5), [1, 5, 32]),
                device,
            ),
            pooled_projections: Tensor::from_data(
                burn::tensor::TensorData::new(ramp(32, 0.5), [1, 32]),
                device,
            ),
            timestep: Tensor::from_data([0.6f32], device),
            img_ids: image_ids(4, 4, 0.0),
            txt_ids: text_ids(5),
            guidance: Some(Tensor::from_data([3.5f32], device)),
        })
        .unwrap();
    HostTensor::from_tensor(out)
}

#[test]
fn kohya_and_peft_loras_apply_at_a_strength() {
    let (model, device) = load();
    let base = predict(&model.transformer, &device);
    let lora_files = fixture("flux/lora_files");
    let (full, report) = model
        .with_lora(&lora_files.join("peft.safetensors"), 1.0, &device)
        .unwrap();
    assert!(!report.modules.is_empty());
    let (half, _) = model
        .with_lora(&lora_files.join("peft.safetensors"), 0.5, &device)
        .unwrap();
    let (kohya, kohya_report) = model
        .with_lora(&lora_files.join("kohya.safetensors"), 1.0, &device)
        .unwrap();
    assert_eq!(kohya_report.modules.len(), report.modules.len());
    let full = predict(&full.transformer, &device);
    let half = predict(&half.transformer, &device);
    let kohya = predict(&kohya.transformer, &device);
    let delta = max_abs_diff(&full, &base);
    assert!(delta > 1e-3, "the LoRA changes the prediction ({delta})");
    // Both files hold the same adapters.
    assert!(max_abs_diff(&full, &kohya) < 1e-4);
    // Half the strength lands between the base and the full LoRA.
    let (d_half, d_rest) = (max_abs_diff(&half, &base), max_abs_diff(&full, &half));
    assert!(
        d_half > 0.2 * delta && d_rest > 0.2 * delta,
        "{d_half} {d_rest} of {delta}"
    );
    // The base model is unchanged.
    assert_eq!(predict(&model.transformer, &device).data, base.data);
    assert!(max_abs(&base) > 0.0);
}

#[test]
fn a_file_without_lora_keys_is_refused_by_name() {
    let (model, device) = load();
    let path = fixture("flux/pipeline/vae/diffusion_pytorch_model.safetensors");
    let e = model
        .with_lora(&path, 1.0, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("lora"),
        "{e}"
    );
    let e = model
        .with_lora(
            &fixture("flux/lora_files/peft.safetensors"),
            f64::NAN,
            &device,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("lora_strength"), "{e}");
}

/// A copy of the fixture folder without `skip` (a path under it).
fn copy_without(skip: &str) -> PathBuf {
    let dir = tmp(&format!("flux-model-{}", skip.replace('/', "-")));
    copy_tree(
        &fixture("flux/pipeline"),
        &dir,
        Path::new(skip),
        Path::new(""),
    );
    dir
}

fn copy_tree(from: &Path, to: &Path, skip: &Path, rel: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        if rel == skip {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, skip, &rel);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn incomplete_folders_are_refused_naming_the_missing_part() {
    let device = Device::flex();
    for missing in [
        "transformer/config.json",
        "text_encoder_2/config.json",
        "tokenizer_2/spiece.model",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let dir = copy_without(missing);
        let e = FluxModel::load_diffusers(&dir, &device)
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        let file = Path::new(missing).file_name().unwrap().to_str().unwrap();
        assert!(e.contains(file), "without {missing}: {e}");
    }
    let e = FluxModel::load_diffusers(&fixture("sdxl/pipeline"), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("FluxPipeline"), "{e}");
}
