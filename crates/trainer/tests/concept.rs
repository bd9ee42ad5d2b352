//! The demo's promise, measured: the demo model (`assets/tiny-sd`) draws the shapes world as
//! asked, does not know the ring, and the demo's LoRA (the demo job's settings,
//! `world::demo::train_config`, on `assets/demo-dataset`) teaches it the ring under the trigger
//! word without breaking the rest.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

use std::path::{Path, PathBuf};

use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::world::{ConceptScore, demo};
use loraflow_trainer::{Controls, TrainConfig, Trainer};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// The demo job's training settings (`loraflow demo`; the root package checks that the job's
/// parameters map to exactly these).
fn demo_config(out: &Path) -> TrainConfig {
    demo::train_config(
        assets().join("tiny-sd"),
        assets().join("demo-dataset"),
        out,
        "demo",
    )
}

// The thresholds are the demo's promise: the committed demo model draws 22/24 base probes as
// asked and 0/16 rings; the demo's LoRA (attention and convolution adapters, see
// `world::demo`) on the committed demo dataset (32 rings under the trigger word, 48
// regularisation pictures) draws rings for the trigger prompts and keeps the base probes.
#[test]
fn the_demo_lora_teaches_the_ring_and_keeps_the_shapes_world() {
    let device = parse_device("cpu").unwrap();
    let base = StableDiffusion::load(assets().join("tiny-sd"), None, &device).unwrap();
    let before = ConceptScore::measure(&Pipeline::new(&base), &device).unwrap();
    assert!(
        before.base.rate() >= 0.8,
        "the base model draws the asked shape and colour in only {}",
        before.base
    );
    assert!(
        before.concept.rate() <= 0.1,
        "the base model already draws rings for the trigger prompt: {}",
        before.concept
    );

    let out = std::env::temp_dir().join(format!("loraflow-concept-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let trained = Trainer::new(demo_config(&out))
        .unwrap()
        .run(&mut |_| {}, &Controls::default())
        .unwrap();
    let (adapted, _) = base.with_lora(&trained.lora, 1.0, &device).unwrap();
    let after = ConceptScore::measure(&Pipeline::new(&adapted), &device).unwrap();
    eprintln!("without the LoRA: {before}; with it: {after}");
    assert!(
        after.concept.rate() >= 0.8,
        "with the LoRA the trigger prompt draws a ring in only {} (before: {})",
        after.concept,
        before.concept
    );
    assert!(
        after.base.rate() >= 0.8,
        "the LoRA broke the base world: {} drawn as asked (before: {})",
        after.base,
        before.base
    );
    let _ = std::fs::remove_dir_all(&out);
}
