//! SDXL's text side against transformers and diffusers: both tokenizers, both encoders'
//! penultimate states, the projected pooled output and `encode_prompt`'s context; and the
//! folder loader. Fixtures from `fixtures/make_sdxl_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::clip::ClipTokenizer;
use loraflow_trainer::sdxl::{SdxlIds, StableDiffusionXl};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

fn rows(file: &TensorFile, key: &str) -> Vec<Vec<u32>> {
    let ids = file.read_i64(key).unwrap();
    ids.chunks(77)
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect()
}

fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 77]), device)
}

fn close(what: &str, got: impl Into<HostTensor>, expected: &HostTensor) {
    let got = got.into();
    let err = max_abs_diff(&got, expected);
    println!(
        "{what}: max abs error {err:e} (scale {})",
        max_abs(expected)
    );
    assert!(err <= 1e-4, "{what}: off by {err}");
}

fn load(device: &Device) -> StableDiffusionXl {
    StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), device).unwrap()
}

fn prompts(io: &TensorFile) -> Vec<String> {
    serde_json::from_str(&io.metadata()["prompts"]).unwrap()
}

#[test]
fn both_tokenizers_match_transformers() {
    let device = Device::flex();
    let model = load(&device);
    let io = TensorFile::open(fixture("sdxl/text_io.safetensors")).unwrap();
    let prompts = prompts(&io);
    let captions: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ids = model.tokenizers.encode_batch(&captions);
    assert_eq!(ids.ids, rows(&io, "te1.input_ids"));
    assert_eq!(ids.ids_2, rows(&io, "te2.input_ids"));
    // The second pads with "!", the first with <|endoftext|>.
    let (_, eos, pad) = model.tokenizers.tokenizer_2.special_ids();
    assert_ne!(pad, eos);
    assert_eq!(*ids.ids_2[0].last().unwrap(), pad);
    assert_eq!(*ids.ids[0].last().unwrap(), eos);
}

#[test]
fn second_tokenizer_matches_transformers_on_awkward_captions() {
    let tokenizer = ClipTokenizer::from_dir(fixture("sdxl/pipeline/tokenizer_2")).unwrap();
    let text = std::fs::read_to_string(fixture("sdxl/tokenizer_2_cases.json")).unwrap();
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

/// A copy of the fixture model whose tokenizer folders hold only `tokenizer.json` (and the
/// tokenizer config), as some hub repositories ship them.
fn tokenizer_json_only_copy(name: &str) -> std::path::PathBuf {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("loraflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy(&fixture("sdxl/pipeline"), &dir);
    for sub in ["tokenizer", "tokenizer_2"] {
        std::fs::remove_file(dir.join(sub).join("vocab.json")).unwrap();
        std::fs::remove_file(dir.join(sub).join("merges.txt")).unwrap();
    }
    dir
}

#[test]
fn folders_with_only_tokenizer_json_tokenize_the_same() {
    let device = Device::flex();
    let dir = tokenizer_json_only_copy("tokjson");
    let model = StableDiffusionXl::load_diffusers(&dir, &device).unwrap();
    let io = TensorFile::open(fixture("sdxl/text_io.safetensors")).unwrap();
    let prompts = prompts(&io);
    let captions: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ids = model.tokenizers.encode_batch(&captions);
    assert_eq!(ids.ids, rows(&io, "te1.input_ids"));
    assert_eq!(ids.ids_2, rows(&io, "te2.input_ids"));
    // The awkward captions too, through the second tokenizer's tokenizer.json.
    let from_json = ClipTokenizer::from_dir(dir.join("tokenizer_2")).unwrap();
    let from_files = ClipTokenizer::from_dir(fixture("sdxl/pipeline/tokenizer_2")).unwrap();
    let text = std::fs::read_to_string(fixture("sdxl/tokenizer_2_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let caption = case["text"].as_str().unwrap();
        assert_eq!(
            from_json.encode_padded(caption),
            from_files.encode_padded(caption),
            "caption {caption:?}"
        );
    }
    assert_eq!(from_json.special_ids(), from_files.special_ids());
    // Without any vocabulary the folder is refused, naming what is missing.
    std::fs::remove_file(dir.join("tokenizer_2").join("tokenizer.json")).unwrap();
    let err = loraflow_trainer::sdxl::SdxlConfig::from_dir(&dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer_2/tokenizer.json"), "{err}");
    // A tokenizer.json of another model type is refused by name.
    std::fs::write(
        dir.join("tokenizer_2").join("tokenizer.json"),
        r#"{"model": {"type": "Unigram", "vocab": []}}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.join("tokenizer_2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Unigram"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn encoders_match_transformers() {
    let device = Device::flex();
    let model = load(&device);
    let io = TensorFile::open(fixture("sdxl/text_io.safetensors")).unwrap();
    let ids1 = rows(&io, "te1.input_ids");
    let ids2 = rows(&io, "te2.input_ids");
    let te1 = model
        .text
        .text_encoder
        .penultimate_hidden_state(ids_tensor(&ids1, &device))
        .unwrap();
    close(
        "te1 penultimate",
        HostTensor::from_tensor(te1),
        &io.read("te1.penultimate").unwrap(),
    );
    let out = model
        .text
        .text_encoder_2
        .forward(ids_tensor(&ids2, &device), &ids2)
        .unwrap();
    close(
        "te2 penultimate",
        HostTensor::from_tensor(out.penultimate),
        &io.read("te2.penultimate").unwrap(),
    );
    close(
        "te2 last hidden state",
        HostTensor::from_tensor(out.last_hidden_state),
        &io.read("te2.last_hidden_state").unwrap(),
    );
    close(
        "te2 text_embeds",
        HostTensor::from_tensor(out.text_embeds),
        &io.read("te2.text_embeds").unwrap(),
    );
}

#[test]
fn encode_prompt_matches_the_pipeline() {
    let device = Device::flex();
    let model = load(&device);
    let io = TensorFile::open(fixture("sdxl/text_io.safetensors")).unwrap();
    let ids = SdxlIds {
        ids: rows(&io, "te1.input_ids"),
        ids_2: rows(&io, "te2.input_ids"),
    };
    let text = model.text.encode(&ids, &device).unwrap();
    assert_eq!(model.text.context_width(), 64);
    close(
        "prompt_embeds",
        HostTensor::from_tensor(text.context),
        &io.read("prompt_embeds").unwrap(),
    );
    close(
        "pooled_prompt_embeds",
        HostTensor::from_tensor(text.pooled),
        &io.read("pooled_prompt_embeds").unwrap(),
    );
}

#[test]
fn the_folder_carries_sdxl_settings() {
    let device = Device::flex();
    let model = load(&device);
    assert!((model.config.vae.scaling_factor - 0.13025).abs() < 1e-12);
    assert_eq!(model.config.text_encoder_2.projection_dim, 32);
    assert!(model.unet.has_added_conditioning());
    // The SD1/SD2 loader refuses the folder by name rather than building a wrong model.
    let err = loraflow_trainer::pipeline::PipelineConfig::from_dir(fixture("sdxl/pipeline"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("addition_embed_type"), "{err}");
}

#[test]
fn mismatched_rows_are_refused() {
    let device = Device::flex();
    let model = load(&device);
    let io = TensorFile::open(fixture("sdxl/text_io.safetensors")).unwrap();
    let mut ids = SdxlIds {
        ids: rows(&io, "te1.input_ids"),
        ids_2: rows(&io, "te2.input_ids"),
    };
    ids.ids_2.pop();
    let err = model.text.encode(&ids, &device).unwrap_err().to_string();
    assert!(err.contains("ids_2"), "{err}");
}
