//! FLUX.1 as ComfyUI users keep it: the tiny dev transformer under Black Forest Labs' names
//! (`flux1-tiny-dev.safetensors`) and the VAE under `ae.safetensors`' LDM names load to exactly
//! the weights of the diffusers folder, and files that do not fit are refused by name.
//! Fixtures from `fixtures/make_flux_pipeline_fixtures.py` (checked there against diffusers'
//! single-file converters).
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use common::fixture;
use common::tiny::tmp;
use loraflow_trainer::flux::{FluxModel, FluxParts, FluxPipeline};
use loraflow_trainer::sample::SampleSettings;
use loraflow_trainer::sample::scheduler::SamplerKind;
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype, TensorFile, write};
use loraflow_trainer::weights::torch_tensors;

fn transformer_file() -> PathBuf {
    fixture("flux/single_file/flux1-tiny-dev.safetensors")
}

/// ComfyUI's layout: separate text encoders (the CLIP folder, the T5 weights file alone) and
/// `ae.safetensors`, with the diffusers folder for configs and tokenizers.
fn comfy_parts() -> FluxParts {
    let pipeline = fixture("flux/pipeline");
    FluxParts {
        clip: pipeline.join("text_encoder"),
        t5: pipeline.join("text_encoder_2/model.safetensors"),
        vae: fixture("flux/single_file/ae.safetensors"),
        config: Some(pipeline),
    }
}

fn same_tensors(a: Vec<(String, HostTensor)>, b: Vec<(String, HostTensor)>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: parameter counts");
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb, "{what}: parameter order");
        assert_eq!(ta.shape, tb.shape, "{what}: {ka}");
        assert!(ta.data == tb.data, "{what}: `{ka}` differs");
    }
}

#[test]
fn bfl_transformer_and_ae_load_the_diffusers_weights_exactly() {
    let device = Device::flex();
    let folder = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    for parts in [
        comfy_parts(),
        FluxParts::from_folder(&fixture("flux/pipeline")),
    ] {
        let single = FluxModel::load_single_file(&transformer_file(), &parts, &device).unwrap();
        assert_eq!(single.config, folder.config);
        same_tensors(
            torch_tensors(&single.transformer, ""),
            torch_tensors(&folder.transformer, ""),
            "transformer",
        );
        same_tensors(
            torch_tensors(&single.vae, ""),
            torch_tensors(&folder.vae, ""),
            "vae",
        );
        same_tensors(
            torch_tensors(&single.t5, ""),
            torch_tensors(&folder.t5, ""),
            "t5",
        );
        same_tensors(
            torch_tensors(&single.clip, ""),
            torch_tensors(&folder.clip, ""),
            "clip",
        );
    }
}

#[test]
fn a_single_file_model_renders_what_the_folder_renders() {
    let device = Device::flex();
    let folder = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    let single = FluxModel::load_single_file(&transformer_file(), &comfy_parts(), &device).unwrap();
    let settings = SampleSettings {
        prompt: "an old lighthouse by the sea".into(),
        negative_prompt: String::new(),
        width: 16,
        height: 16,
        steps: 2,
        guidance_scale: 3.5,
        seed: 3,
        sampler: SamplerKind::Euler,
        clip_skip: 1,
    };
    let a = FluxPipeline::new(&folder)
        .render(&settings, &device)
        .unwrap();
    let b = FluxPipeline::new(&single)
        .render(&settings, &device)
        .unwrap();
    assert_eq!(a, b);
    let latents = Tensor::<4>::ones([1, 1, 8, 8], &device);
    let x = FluxPipeline::new(&folder)
        .generate(&settings, Some(latents.clone()), &device)
        .unwrap();
    let y = FluxPipeline::new(&single)
        .generate(&settings, Some(latents), &device)
        .unwrap();
    assert_eq!(
        HostTensor::from_tensor(x.image).data,
        HostTensor::from_tensor(y.image).data
    );
}

/// The BFL file with `edit` applied to its tensors, written to a scratch file.
fn edited(name: &str, edit: impl Fn(&mut Vec<(String, HostTensor)>)) -> PathBuf {
    let file = TensorFile::open(transformer_file()).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = file
        .names()
        .into_iter()
        .map(|n| {
            let t = file.read(&n).unwrap();
            (n, t)
        })
        .collect();
    edit(&mut tensors);
    let path = tmp("flux-single-file").join(name);
    write(&path, &tensors, HashMap::new(), SaveDtype::F32).unwrap();
    path
}

#[test]
fn comfy_prefixed_keys_are_read() {
    let device = Device::flex();
    let path = edited("prefixed.safetensors", |ts| {
        for (n, _) in ts.iter_mut() {
            *n = format!("model.diffusion_model.{n}");
        }
    });
    let single = FluxModel::load_single_file(&path, &comfy_parts(), &device).unwrap();
    let folder = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    same_tensors(
        torch_tensors(&single.transformer, ""),
        torch_tensors(&folder.transformer, ""),
        "transformer",
    );
}

#[test]
fn files_that_do_not_fit_are_refused_by_name() {
    let device = Device::flex();
    let load = |path: &PathBuf, parts: &FluxParts| {
        FluxModel::load_single_file(path, parts, &device)
            .unwrap_err()
            .to_string()
    };
    // A fused q/k/v that is not three parts of the token width.
    let path = edited("short_qkv.safetensors", |ts| {
        let (_, t) = ts
            .iter_mut()
            .find(|(n, _)| n == "double_blocks.0.img_attn.qkv.weight")
            .unwrap();
        let row = t.shape[1];
        t.shape[0] -= 1;
        t.data.truncate(t.shape[0] * row);
    });
    let e = load(&path, &comfy_parts());
    assert!(e.contains("double_blocks.0.img_attn.qkv.weight"), "{e}");
    // schnell's file (no guidance_in) with dev's config.
    let path = edited("no_guidance.safetensors", |ts| {
        ts.retain(|(n, _)| !n.starts_with("guidance_in."))
    });
    let e = load(&path, &comfy_parts());
    assert!(e.contains("guidance_embeds") && e.contains("lacks"), "{e}");
    // A missing single block in the middle is named.
    let path = edited("extra_block.safetensors", |ts| {
        let extra: Vec<(String, HostTensor)> = ts
            .iter()
            .filter(|(n, _)| n.starts_with("single_blocks.0."))
            .map(|(n, t)| {
                (
                    n.replacen("single_blocks.0.", "single_blocks.2.", 1),
                    t.clone(),
                )
            })
            .collect();
        ts.extend(extra);
    });
    let e = load(&path, &comfy_parts());
    assert!(e.contains("single_blocks.1"), "{e}");
    // Without a config folder every width is FLUX.1's, which the tiny file is not.
    let parts = FluxParts {
        config: None,
        ..comfy_parts()
    };
    let e = load(&transformer_file(), &parts);
    assert!(e.contains("transformer.") || e.contains("img_in"), "{e}");
    // A diffusers file is not a BFL one.
    let e = load(
        &fixture("flux/pipeline/transformer/diffusion_pytorch_model.safetensors"),
        &comfy_parts(),
    );
    assert!(e.contains("diffusers"), "{e}");
    // Missing parts are named by field.
    let parts = FluxParts {
        vae: fixture("flux/single_file/missing_ae.safetensors"),
        ..comfy_parts()
    };
    let e = load(&transformer_file(), &parts);
    assert!(e.contains("parts.vae"), "{e}");
}
