//! The T5 encoder and tokenizer against transformers and SentencePiece: tiny
//! `T5EncoderModel`s (gated-GELU as T5 v1.1 / FLUX's T5-XXL, and the original ReLU form) with
//! `last_hidden_state` within 1e-4 (fp32), with and without an attention mask and past the
//! maximum relative distance; relative position buckets equal to transformers' on -600..=600;
//! and the ids of 341 awkward strings equal to the SentencePiece library's (with T5's `nmt_nfkc`
//! normaliser, and with byte fallback) and to transformers' `T5Tokenizer`. Fixtures from
//! `fixtures/make_t5_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Int, Tensor};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::clip::ids_tensor;
use loraflow_trainer::flux::{FluxInputs, FluxTransformer2DModel, FluxTransformerConfig, text_ids};
use loraflow_trainer::lora::LoraLayers;
use loraflow_trainer::t5::{T5Config, T5EncoderModel, T5Tokenizer, relative_position_bucket};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("t5/tokenizer_cases.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

/// Runs `encode` on every case and compares with the recorded ids under `key`.
fn compare(key: &str, encode: impl Fn(&str) -> Vec<u32>) {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case[key]);
        let got = encode(text);
        if got != expected {
            failures.push(format!("{text:?}: got {got:?}, expected {expected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ for {key}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn tokenizer_matches_sentencepiece_with_t5_normaliser() {
    let tok = T5Tokenizer::from_file(fixture("t5/spiece.model")).unwrap();
    assert!(!tok.byte_fallback());
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.unk_id()), (0, 1, 2));
    compare("ids", |t| tok.encode_pieces(t).unwrap());
}

#[test]
fn tokenizer_matches_sentencepiece_with_byte_fallback() {
    let tok = T5Tokenizer::from_file(fixture("t5/spiece_bytes.model")).unwrap();
    assert!(tok.byte_fallback());
    compare("bytes_ids", |t| tok.encode_pieces(t).unwrap());
}

#[test]
fn tokenizer_matches_transformers_t5_tokenizer() {
    let tok = T5Tokenizer::from_file(fixture("t5/spiece.model")).unwrap();
    compare("transformers_ids", |t| tok.encode(t).unwrap());
}

#[test]
fn padded_ids_keep_the_end_token_and_pad() {
    let tok = T5Tokenizer::from_file(fixture("t5/spiece.model")).unwrap();
    let text = "a red fox in the snow, oil painting";
    let full = tok.encode(text).unwrap();
    assert_eq!(*full.last().unwrap(), tok.eos_id());
    let padded = tok.encode_padded(text, full.len() + 5).unwrap();
    assert_eq!(&padded[..full.len()], &full[..]);
    assert!(padded[full.len()..].iter().all(|&i| i == tok.pad_id()));
    let cut = tok.encode_padded(text, 4).unwrap();
    assert_eq!(cut, [full[0], full[1], full[2], tok.eos_id()]);
    let err = tok.encode_padded(text, 0).unwrap_err().to_string();
    assert!(err.contains("max_length") && err.contains('0'), "{err}");
}

#[test]
fn relative_position_buckets_match_transformers() {
    let text = std::fs::read_to_string(fixture("t5/buckets.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    for (name, entry) in value.as_object().unwrap() {
        let buckets = entry["num_buckets"].as_u64().unwrap() as usize;
        let distance = entry["max_distance"].as_u64().unwrap() as usize;
        let from = entry["from"].as_i64().unwrap();
        for (i, expected) in entry["buckets"].as_array().unwrap().iter().enumerate() {
            let relative = from + i as i64;
            assert_eq!(
                relative_position_bucket(relative, buckets, distance) as u64,
                expected.as_u64().unwrap(),
                "{name}: relative position {relative}"
            );
        }
    }
}

fn model(name: &str, device: &Device) -> T5EncoderModel {
    T5Config::from_file(fixture(&format!("t5/{name}/config.json")))
        .unwrap()
        .init(device)
        .load_file(fixture(&format!("t5/{name}/model.safetensors")))
        .unwrap()
}

fn id_tensor(host: &HostTensor, device: &Device) -> Tensor<2, Int> {
    let rows = host
        .data
        .chunks(host.shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect::<Vec<Vec<u32>>>();
    ids_tensor(&rows, device)
}

fn parity(name: &str) {
    let device = Device::flex();
    let model = model(name, &device);
    let file = TensorFile::open(fixture(&format!("t5/{name}/io.safetensors"))).unwrap();
    let read = |k: &str| file.read(k).unwrap();
    let check = |what: &str, out: Tensor<3>, expected: HostTensor| {
        let err = max_abs_diff(&HostTensor::from_tensor(out), &expected);
        println!(
            "t5 {name} {what}: max abs error {err:e} (output scale {})",
            max_abs(&expected)
        );
        assert!(err <= 1e-4, "{name} {what}: max abs error {err} > 1e-4");
    };
    let ids = id_tensor(&read("ids"), &device);
    check("padded", model.forward(ids.clone(), None), read("out"));
    let mask = read("mask").to_tensor::<2>(&device);
    check("masked", model.forward(ids, Some(mask)), read("masked_out"));
    let long = id_tensor(&read("long_ids"), &device);
    check("160 tokens", model.forward(long, None), read("long_out"));
}

#[test]
fn gated_gelu_encoder_matches_transformers() {
    parity("gated");
}

#[test]
fn relu_encoder_matches_transformers() {
    parity("relu");
}

#[test]
fn encoder_exposes_its_linears_under_transformers_names() {
    let device = Device::flex();
    let mut gated = model("gated", &device);
    let names: Vec<String> = gated.layers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 7);
    assert_eq!(names[0], "encoder.block.0.layer.0.SelfAttention.q");
    assert_eq!(names[6], "encoder.block.0.layer.1.DenseReluDense.wo");
    let mut relu = model("relu", &device);
    assert_eq!(relu.layers().len(), 2 * 6);
}

#[test]
fn config_errors_name_the_field() {
    let bad: Value = serde_json::json!({"model_type": "t5", "feed_forward_proj": "gated-tanh"});
    let err = T5Config::from_transformers(&bad).unwrap_err().to_string();
    assert!(
        err.contains("feed_forward_proj") && err.contains("gated-tanh"),
        "{err}"
    );
    let bad: Value = serde_json::json!({"model_type": "t5", "relative_attention_num_buckets": 7});
    let err = T5Config::from_transformers(&bad).unwrap_err().to_string();
    assert!(
        err.contains("relative_attention_num_buckets") && err.contains('7'),
        "{err}"
    );
}

#[test]
fn encode_checks_ids_by_field() {
    let device = Device::flex();
    let model = model("gated", &device);
    let vocab = model.vocab_size() as u32;
    let err = model.encode(&[], &device).unwrap_err().to_string();
    assert!(err.contains("`ids`"), "{err}");
    let err = model
        .encode(&[vec![3, vocab]], &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`ids`") && err.contains(&vocab.to_string()),
        "{err}"
    );
    let err = model
        .encode(&[vec![3, 4], vec![5]], &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`ids[1]`") && err.contains("1 tokens"),
        "{err}"
    );
    assert_eq!(
        model.encode(&[vec![3, 4, 1]], &device).unwrap().dims(),
        [1, 3, 32]
    );
}

/// The tiny T5 (d_model 32) feeds the tiny Flux transformer (joint_attention_dim 32) as the
/// FLUX pipelines do: the tokenizer's padded ids, the encoder's last state as
/// `encoder_hidden_states`, zero text positions. Different captions give different outputs.
#[test]
fn t5_states_drive_the_flux_transformer() {
    let device = Device::flex();
    let tok = T5Tokenizer::from_file(fixture("t5/spiece.model")).unwrap();
    let t5 = model("gated", &device);
    let flux: FluxTransformer2DModel =
        FluxTransformerConfig::from_file(fixture("flux/schnell/config.json"))
            .unwrap()
            .init(&device)
            .load_diffusers(fixture("flux/schnell/diffusion_pytorch_model.safetensors"))
            .unwrap();
    let file = TensorFile::open(fixture("flux/schnell/io.safetensors")).unwrap();
    let read = |k: &str| file.read(k).unwrap();
    let run = |captions: [&str; 2]| {
        let ids: Vec<Vec<u32>> = captions
            .iter()
            .map(|c| tok.encode_padded(c, 8).unwrap())
            .collect();
        let states = t5.encode(&ids, &device).unwrap();
        let inputs = FluxInputs {
            hidden_states: read("hidden_states").to_tensor(&device),
            encoder_hidden_states: states,
            pooled_projections: read("pooled_projections").to_tensor(&device),
            timestep: read("timestep").to_tensor(&device),
            img_ids: read("img_ids"),
            txt_ids: text_ids(8),
            guidance: None,
        };
        HostTensor::from_tensor(flux.forward(inputs).unwrap())
    };
    let a = run(["a red fox in the snow", "a robot on Mars"]);
    let b = run(["a red fox in the snow", "two cats by the sea"]);
    let rows = a.data.len() / 2;
    let first = max_abs_diff(
        &HostTensor::new(vec![rows], a.data[..rows].to_vec()),
        &HostTensor::new(vec![rows], b.data[..rows].to_vec()),
    );
    let second = max_abs_diff(
        &HostTensor::new(vec![rows], a.data[rows..].to_vec()),
        &HostTensor::new(vec![rows], b.data[rows..].to_vec()),
    );
    assert_eq!(first, 0.0, "the same caption gives the same output");
    assert!(
        second > 1e-3,
        "another caption changes the output ({second})"
    );
}

/// The tiny model split into two shards with a transformers index loads to the same output.
#[test]
fn sharded_weights_load_through_the_index() {
    use loraflow_trainer::tensor_file::{SaveDtype, write};
    use std::collections::HashMap;
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("loraflow-t5-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = TensorFile::open(fixture("t5/gated/model.safetensors")).unwrap();
    let names = file.names();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let tensors: Vec<(String, HostTensor)> = part
            .iter()
            .map(|n| (n.clone(), file.read(n).unwrap()))
            .collect();
        write(&dir.join(&shard), &tensors, HashMap::new(), SaveDtype::F32).unwrap();
        for n in part {
            map.insert(n.clone(), Value::String(shard.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let config = T5Config::from_file(fixture("t5/gated/config.json")).unwrap();
    let sharded = config.init(&device).load_dir(&dir).unwrap();
    let single = model("gated", &device);
    let ids = vec![vec![5, 9, 14, 1]];
    let a = HostTensor::from_tensor(sharded.encode(&ids, &device).unwrap());
    let b = HostTensor::from_tensor(single.encode(&ids, &device).unwrap());
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // An index naming a file outside its folder is refused, naming the entry.
    let bad = serde_json::json!({"weight_map": {"shared.weight": "../elsewhere.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    for i in 1..=2 {
        std::fs::remove_file(dir.join(format!("model-0000{i}-of-00002.safetensors"))).unwrap();
    }
    let err = config.init(&device).load_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("weight_map.shared.weight"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
