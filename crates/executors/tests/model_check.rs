//! `model_check` on folders and checkpoints written by the tests: a
//! safetensors header with the key names and shapes of each family (the
//! data is zeros: only headers are read).

use std::path::Path;

use loraflow_core::catalogue::ModelFamily;
use loraflow_executors::model_check::{CheckError, Layout, check_model};

/// A safetensors file with F16 tensors of these names and shapes.
fn safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.resize(file.len() + offset, 0);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, file).unwrap();
}

const SD_UNET_K: &str =
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";

fn ldm(path: &Path, width: usize, text_encoder: &str, vae: bool) {
    let k_shape = [4, width];
    let mut t: Vec<(&str, &[usize])> = vec![
        ("model.diffusion_model.input_blocks.0.0.weight", &[4, 4]),
        (SD_UNET_K, &k_shape),
        (text_encoder, &[2, 2]),
    ];
    if vae {
        t.push(("first_stage_model.decoder.conv_in.weight", &[2, 2]));
    }
    safetensors(path, &t);
}

#[test]
fn single_files_of_each_family_are_told_apart_by_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let sd15 = tmp.path().join("sd15.safetensors");
    ldm(
        &sd15,
        768,
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        true,
    );
    let r = check_model(&sd15).unwrap();
    assert_eq!(
        (r.layout, r.family),
        (Layout::SingleFile, ModelFamily::Sd15)
    );
    assert!(r.evidence.contains("768"), "{r:?}");
    assert!(r.missing.is_empty(), "{r:?}");
    assert!(
        r.native_trainable(),
        "SD1.x single files train natively: {r:?}"
    );
    assert!(r.notes[0].contains("config_dir"), "{r:?}");

    let sd2 = tmp.path().join("sd21.safetensors");
    ldm(
        &sd2,
        1024,
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        true,
    );
    let r = check_model(&sd2).unwrap();
    assert_eq!(r.family, ModelFamily::Sd2);
    assert!(!r.native_trainable());
    assert!(r.native_unsupported.unwrap().contains("diffusers folder"));

    let sdxl = tmp.path().join("sdxl.safetensors");
    safetensors(
        &sdxl,
        &[
            ("model.diffusion_model.input_blocks.0.0.weight", &[4, 4]),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                &[4],
            ),
            ("conditioner.embedders.1.model.ln_final.weight", &[4]),
            ("first_stage_model.decoder.conv_in.weight", &[2, 2]),
        ],
    );
    let r = check_model(&sdxl).unwrap();
    assert_eq!(r.family, ModelFamily::Sdxl);
    assert!(r.missing.is_empty(), "{r:?}");
    // SDXL single files train natively, with a diffusers folder's configs.
    assert_eq!(r.native_unsupported, None, "{r:?}");

    let flux = tmp.path().join("flux1-dev.safetensors");
    safetensors(
        &flux,
        &[
            ("double_blocks.0.img_attn.qkv.weight", &[4, 4]),
            ("single_blocks.0.linear1.weight", &[4, 4]),
        ],
    );
    let r = check_model(&flux).unwrap();
    assert_eq!(r.family, ModelFamily::Flux);
    assert!(
        r.missing.iter().any(|m| m.contains("ae.safetensors")),
        "{r:?}"
    );
    // The file alone lacks its VAE and text encoders; with a FLUX.1 config_dir that holds
    // them the native engine trains it.
    assert!(!r.native_trainable());
    assert_eq!(r.native_unsupported, None, "{r:?}");
    assert!(r.notes[0].contains("config_dir"), "{r:?}");
}

#[test]
fn a_single_file_without_vae_or_text_encoder_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("unet-only.safetensors");
    safetensors(&path, &[(SD_UNET_K, &[4, 768])]);
    let r = check_model(&path).unwrap();
    assert_eq!(r.family, ModelFamily::Sd15);
    assert_eq!(r.missing.len(), 2, "{r:?}");
    assert!(r.missing.iter().any(|m| m.contains("no VAE")), "{r:?}");
    assert!(
        r.missing.iter().any(|m| m.contains("no text encoder")),
        "{r:?}"
    );
    assert!(!r.native_trainable());
}

fn json(path: &Path, value: serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

/// A diffusers folder of `class` with these components, complete.
fn diffusers(dir: &Path, class: &str, unet: serde_json::Value, components: &[&str]) {
    let mut index = serde_json::json!({"_class_name": class, "safety_checker": [null, null]});
    for c in components {
        index[*c] = serde_json::json!(["diffusers", "X"]);
        let folder = dir.join(c);
        std::fs::create_dir_all(&folder).unwrap();
        if c.starts_with("tokenizer") {
            std::fs::write(folder.join("vocab.json"), "{}").unwrap();
            std::fs::write(folder.join("merges.txt"), "").unwrap();
        } else if *c == "scheduler" {
            json(&folder.join("scheduler_config.json"), serde_json::json!({}));
        } else {
            let config = if *c == "unet" {
                unet.clone()
            } else {
                serde_json::json!({})
            };
            json(&folder.join("config.json"), config);
            safetensors(&folder.join("model.safetensors"), &[("w", &[1])]);
        }
    }
    json(&dir.join("model_index.json"), index);
}

const SD: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

#[test]
fn diffusers_folders_of_each_family() {
    let tmp = tempfile::tempdir().unwrap();
    let sd15 = tmp.path().join("sd15");
    diffusers(
        &sd15,
        "StableDiffusionPipeline",
        serde_json::json!({"cross_attention_dim": 768}),
        &SD,
    );
    let r = check_model(&sd15).unwrap();
    assert_eq!((r.layout, r.family), (Layout::Diffusers, ModelFamily::Sd15));
    assert!(r.native_trainable(), "{r:?}");

    let sd2 = tmp.path().join("sd21");
    diffusers(
        &sd2,
        "StableDiffusionPipeline",
        serde_json::json!({"cross_attention_dim": 1024}),
        &SD,
    );
    let r = check_model(&sd2).unwrap();
    assert_eq!(r.family, ModelFamily::Sd2);
    assert!(r.native_trainable(), "{r:?}");

    let sdxl = tmp.path().join("sdxl");
    diffusers(
        &sdxl,
        "StableDiffusionXLPipeline",
        serde_json::json!({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}),
        &[
            "unet",
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "scheduler",
        ],
    );
    let r = check_model(&sdxl).unwrap();
    assert_eq!(r.family, ModelFamily::Sdxl);
    assert!(r.missing.is_empty(), "{r:?}");
    assert!(r.native_trainable(), "{r:?}");

    let flux = tmp.path().join("flux");
    diffusers(
        &flux,
        "FluxPipeline",
        serde_json::json!({}),
        &[
            "transformer",
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "scheduler",
        ],
    );
    let r = check_model(&flux).unwrap();
    assert_eq!(r.family, ModelFamily::Flux);
    // FLUX.1 trains natively from a diffusers folder (not from a single file, above).
    assert!(r.native_trainable(), "{r:?}");
}

#[test]
fn the_shipped_demo_model_is_complete_and_trainable() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-sd");
    let r = check_model(&tiny).unwrap();
    assert_eq!(r.family, ModelFamily::Sd15);
    assert!(r.native_trainable(), "{r:?}");
    assert!(r.evidence.contains("cross_attention_dim 64"), "{r:?}");
}

#[test]
fn missing_components_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd15");
    diffusers(
        &dir,
        "StableDiffusionPipeline",
        serde_json::json!({"cross_attention_dim": 768}),
        &SD,
    );
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    std::fs::remove_file(dir.join("tokenizer/merges.txt")).unwrap();
    std::fs::remove_file(dir.join("text_encoder/model.safetensors")).unwrap();
    std::fs::write(dir.join("text_encoder/pytorch_model.bin"), b"pickle").unwrap();
    let r = check_model(&dir).unwrap();
    assert_eq!(r.missing.len(), 3, "{r:?}");
    assert!(r.missing.iter().any(|m| m == "no vae/ folder"), "{r:?}");
    assert!(
        r.missing
            .iter()
            .any(|m| m.contains("tokenizer/ has no vocabulary")),
        "{r:?}"
    );
    assert!(
        r.missing.iter().any(|m| m.contains(".bin weights only")),
        "{r:?}"
    );
    assert!(!r.native_trainable());
}

#[test]
fn files_that_are_not_models_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    assert!(matches!(
        check_model(&missing),
        Err(CheckError::NotFound(_))
    ));

    let text = tmp.path().join("notes.safetensors");
    std::fs::write(&text, b"hello, this is not a model at all").unwrap();
    let err = check_model(&text).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file"), "{err}");

    let lora = tmp.path().join("my-lora.safetensors");
    safetensors(
        &lora,
        &[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            &[4, 4],
        )],
    );
    let err = check_model(&lora).unwrap_err().to_string();
    assert!(err.contains("LoRA"), "{err}");

    let other = tmp.path().join("classifier.safetensors");
    safetensors(&other, &[("fc.weight", &[2, 2])]);
    let err = check_model(&other).unwrap_err().to_string();
    assert!(
        err.contains("match no known family") && err.contains("fc.weight"),
        "{err}"
    );

    let truncated = tmp.path().join("cut.safetensors");
    ldm(&truncated, 768, "cond_stage_model.transformer.x", true);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let err = check_model(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");

    let ckpt = tmp.path().join("v1-5.ckpt");
    std::fs::write(&ckpt, b"pickle").unwrap();
    assert!(
        check_model(&ckpt)
            .unwrap_err()
            .to_string()
            .contains("pickled")
    );

    let folder = tmp.path().join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    let err = check_model(&folder).unwrap_err().to_string();
    assert!(err.contains("not a diffusers folder"), "{err}");
}
