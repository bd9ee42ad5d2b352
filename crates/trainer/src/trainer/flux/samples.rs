//! Images rendered during a Flux run with the current adapters, through the Flux sampler
//! ([`FluxPipeline::denoise`]) on the cached text states of their prompts.
//!
//! The run's own prompts are encoded with the captions, before the text encoders are dropped.
//! A request for prompts not seen then (a `sample_now` with prompts of its own) reloads the
//! model on the CPU once to encode them (caching the result), since the run no longer holds
//! the encoders.

use burn::module::Module;

use super::super::prepare::cache_of;
use super::super::{ProgressEvent, ProgressSink, SavedSamples};
use super::FluxRun;
use super::prepare::LoadedFlux;
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::flux::sample::FluxPipeline;
use crate::sample::png::{RgbImage, write_png};
use crate::sample::{SampleSettings, png_text};
use crate::tensor_file::HostTensor;
use crate::train::config::SampleConfig;

impl FluxRun<'_> {
    /// Renders `asked` (a request's settings) or the run's own prompts with the current
    /// adapters, labelled with `epoch`.
    pub(super) fn render_samples(
        &mut self,
        epoch: usize,
        asked: Option<&SampleConfig>,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        let cfg = self.cfg;
        let Some(sample) = asked.or(cfg.sample.as_ref()) else {
            return Ok(());
        };
        let width = asked.and_then(|a| a.size).unwrap_or(self.sample_size);
        let height = sample.height.unwrap_or(width);
        self.encode_new_prompts(&sample.prompts, sink)?;
        let device = parse_device(&cfg.device)?;
        // Inference copies: nothing is recorded for gradients.
        let (transformer, vae) = (self.transformer.valid(), self.vae.valid());
        let pipeline = FluxPipeline {
            transformer: &transformer,
            vae: &vae,
            model: None,
            scheduler: &self.scheduler,
        };
        let dir = cfg.output.dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
        let mut paths = Vec::new();
        for (i, prompt) in sample.prompts.iter().enumerate() {
            let settings = SampleSettings {
                prompt: prompt.clone(),
                negative_prompt: sample.negative_prompt.clone(),
                width,
                height,
                steps: sample.steps,
                guidance_scale: sample.guidance_scale,
                seed: sample.seed + i as u64,
                sampler: sample.sampler,
                clip_skip: 1,
            };
            let text = &self.text[prompt];
            let states = text.t5.to_tensor::<2>(&device).unsqueeze_dim::<3>(0);
            let pooled = text.pooled.to_tensor::<1>(&device).unsqueeze_dim::<2>(0);
            let latents = pipeline.initial_latents(&settings)?.to_tensor::<4>(&device);
            let out = pipeline.denoise(&settings, latents, states, pooled)?;
            let [_, _, h, w] = out.image.dims();
            let image = RgbImage::from_chw(&HostTensor::from_tensor(out.image).data, h, w);
            let path = dir.join(format!(
                "{}-e{epoch:06}-s{:08}-{i:02}.png",
                cfg.output.name, self.pos.step
            ));
            let text = png_text(&settings, &self.model_name, Some((&cfg.output.name, 1.0)));
            write_png(&path, &image, &text)?;
            paths.push(path);
        }
        let entry = SavedSamples {
            epoch,
            step: self.pos.step,
            paths,
        };
        sink.report(ProgressEvent::Sampled(entry.clone()));
        self.samples.push(entry);
        Ok(())
    }

    /// Encodes the prompts the run has no text states for (from the cache, or by the text
    /// encoders of the model reloaded on the CPU).
    fn encode_new_prompts(
        &mut self,
        prompts: &[String],
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        let new: Vec<String> = prompts
            .iter()
            .filter(|p| !self.text.contains_key(*p))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let cpu = parse_device("cpu")?;
        let loaded = LoadedFlux::load(&self.model, &self.model_dir, &cpu)?;
        let cache = cache_of(self.cfg);
        self.text
            .extend(loaded.encode_captions(&new, &cache, sink, &cpu)?);
        Ok(())
    }
}
