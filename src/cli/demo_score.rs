//! The demo's concept score: how often the demo model draws the ring for the trigger prompt
//! (and still draws the shapes world as asked) without its LoRA and with each saved epoch's
//! LoRA. Fixed probes, fixed seeds: see `loraflow_trainer::world::concept`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use loraflow::core::views::JobStatus;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::Pipeline;
use loraflow_trainer::world::ConceptScore;
use loraflow_trainer::world::concept::PROBE_SEEDS;

/// The score of the base model and of each saved epoch's LoRA.
#[derive(Debug, Clone, Default)]
pub struct DemoScores {
    /// The base model without a LoRA.
    pub base: ConceptScore,
    /// Each epoch with a LoRA.
    pub epochs: BTreeMap<u32, ConceptScore>,
}

/// Scores the base model and every epoch's LoRA (local files) on `device`.
pub fn score(
    model: &Path,
    loras: &BTreeMap<u32, PathBuf>,
    device: &str,
) -> anyhow::Result<DemoScores> {
    let device = parse_device(device)?;
    let base = StableDiffusion::load(model, None, &device)
        .with_context(|| format!("cannot load {}", model.display()))?;
    // One seed per probe keeps the demo short; the learning test uses every seed.
    let seeds = &PROBE_SEEDS[..1];
    let mut scores = DemoScores {
        base: ConceptScore::measure_at(&Pipeline::new(&base), seeds, &device)?,
        epochs: BTreeMap::new(),
    };
    for (&epoch, lora) in loras {
        let (adapted, _) = base
            .with_lora(lora, 1.0, &device)
            .with_context(|| format!("cannot apply {}", lora.display()))?;
        let score = ConceptScore::measure_at(&Pipeline::new(&adapted), seeds, &device)?;
        scores.epochs.insert(epoch, score);
    }
    Ok(scores)
}

/// The local LoRA file of each epoch of a job whose artifacts are on this machine.
pub fn local_loras(status: &JobStatus) -> BTreeMap<u32, PathBuf> {
    status
        .epochs
        .values()
        .filter_map(|e| {
            let uri = &e.lora.as_ref()?.uri;
            let path = url::Url::parse(uri).ok()?.to_file_path().ok()?;
            Some((e.epoch, path))
        })
        .collect()
}
