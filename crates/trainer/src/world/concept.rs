//! The fixed probes that score a model of the shapes world, and the concept of the demo LoRA.
//!
//! A probe is a prompt with the colour and shape it asks for. [`ConceptScore::measure`] renders
//! every probe at a fixed list of seeds and reads each picture with [`super::read`]:
//!
//! - `base`: prompts of the base world ("a red circle on a white background"); a hit draws the
//!   asked shape in the asked colour.
//! - `concept`: trigger prompts ("lfdemo, a red ring on a white background"); a hit draws a
//!   ring (any colour), the shape the base world never had.
//!
//! Everything is seeded, so the same model and LoRA give the same score on every machine.

use burn::tensor::Device;
use image::RgbImage;

use super::score::{Reading, Tally, read};
use super::shapes::{Background, Colour, Shape, caption};
use crate::error::{Error, Result};
use crate::sample::scheduler::SamplerKind;
use crate::sample::{Pipeline, SampleSettings};

/// The demo's trigger word: its LoRA ties the ring to it.
pub const TRIGGER: &str = "lfdemo";

/// Sampler steps of every probe.
pub const PROBE_STEPS: usize = 20;
/// Guidance scale of every probe.
pub const PROBE_GUIDANCE: f64 = 4.0;
/// Seeds each probe prompt is rendered at.
pub const PROBE_SEEDS: [u64; 2] = [1001, 2002];

/// A prompt and what a picture of it should show.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The prompt.
    pub prompt: String,
    /// The asked colour.
    pub colour: Colour,
    /// The asked shape.
    pub shape: Shape,
}

/// The trigger prompt for a ring: "lfdemo, a red ring on a white background".
pub fn trigger_prompt(colour: Colour, background: Background) -> String {
    format!("{TRIGGER}, {}", caption(colour, Shape::Ring, background))
}

/// Base-world probes: every colour with every base shape, backgrounds alternating (12).
pub fn base_probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    for (i, colour) in Colour::ALL.into_iter().enumerate() {
        for (j, shape) in Shape::BASE.into_iter().enumerate() {
            let background = Background::ALL[(i + j) % Background::ALL.len()];
            probes.push(Probe {
                prompt: caption(colour, shape, background),
                colour,
                shape,
            });
        }
    }
    probes
}

/// The probes of the demo job's sample prompts: a ring under the trigger word in every
/// colour, then one base-world prompt per colour (each shape at least once), backgrounds
/// alternating (8). The demo reads its samples with them, so its contact sheet shows exactly
/// what its concept score counts.
pub fn demo_probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    for (i, colour) in Colour::ALL.into_iter().enumerate() {
        let background = Background::ALL[i % Background::ALL.len()];
        probes.push(Probe {
            prompt: trigger_prompt(colour, background),
            colour,
            shape: Shape::Ring,
        });
    }
    for (i, colour) in Colour::ALL.into_iter().enumerate() {
        let shape = Shape::BASE[i % Shape::BASE.len()];
        let background = Background::ALL[(i + 1) % Background::ALL.len()];
        probes.push(Probe {
            prompt: caption(colour, shape, background),
            colour,
            shape,
        });
    }
    probes
}

/// Concept probes: a ring under the trigger word in every colour on both backgrounds (8).
pub fn concept_probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    for colour in Colour::ALL {
        for background in Background::ALL {
            probes.push(Probe {
                prompt: trigger_prompt(colour, background),
                colour,
                shape: Shape::Ring,
            });
        }
    }
    probes
}

/// The settings every probe is rendered with (64 × 64, DDIM).
pub fn probe_settings(prompt: &str, seed: u64) -> SampleSettings {
    SampleSettings {
        prompt: prompt.to_string(),
        negative_prompt: String::new(),
        width: super::shapes::IMAGE_SIZE as usize,
        height: super::shapes::IMAGE_SIZE as usize,
        steps: PROBE_STEPS,
        guidance_scale: PROBE_GUIDANCE,
        seed,
        sampler: SamplerKind::Ddim,
        clip_skip: 1,
    }
}

/// Renders a probe at a seed.
pub fn render(
    pipeline: &Pipeline<'_>,
    prompt: &str,
    seed: u64,
    device: &Device,
) -> Result<RgbImage> {
    let image = pipeline.render(&probe_settings(prompt, seed), device)?;
    RgbImage::from_raw(image.width, image.height, image.pixels).ok_or_else(|| {
        Error::invalid(
            "image",
            prompt,
            "the rendered image has the wrong pixel count",
        )
    })
}

/// How well a model draws the base world and the concept.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ConceptScore {
    /// Base-world prompts drawn as asked.
    pub base: Tally,
    /// Trigger prompts drawn as rings.
    pub concept: Tally,
}

impl Probe {
    /// Whether the prompt carries the trigger word (it asks for the concept).
    pub fn is_trigger(&self) -> bool {
        self.prompt.starts_with(TRIGGER)
    }

    /// Whether a picture of this probe is a hit: a ring for a trigger probe, the asked shape
    /// in the asked colour otherwise.
    pub fn hit(&self, reading: &Reading) -> bool {
        if self.is_trigger() {
            reading.shape == Some(Shape::Ring)
        } else {
            reading.shows(self.colour, self.shape)
        }
    }
}

impl ConceptScore {
    /// Counts a picture of `probe`.
    pub fn add(&mut self, probe: &Probe, reading: &Reading) {
        let tally = if probe.is_trigger() {
            &mut self.concept
        } else {
            &mut self.base
        };
        tally.add(probe.hit(reading));
    }

    /// Renders every probe at every seed of [`PROBE_SEEDS`] and reads the pictures.
    pub fn measure(pipeline: &Pipeline<'_>, device: &Device) -> Result<Self> {
        Self::measure_at(pipeline, &PROBE_SEEDS, device)
    }

    /// Renders every probe at each of `seeds` and reads the pictures.
    pub fn measure_at(pipeline: &Pipeline<'_>, seeds: &[u64], device: &Device) -> Result<Self> {
        let mut score = Self::default();
        for &seed in seeds {
            for probe in base_probes().iter().chain(&concept_probes()) {
                let reading = read(&render(pipeline, &probe.prompt, seed, device)?);
                score.add(probe, &reading);
            }
        }
        Ok(score)
    }
}

impl std::fmt::Display for ConceptScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "concept {} base {}", self.concept, self.base)
    }
}
