//! Sample images rendered during training with the current adapters.

use burn::module::Module;

use super::run::Run;
use super::{ProgressEvent, ProgressSink, SavedSamples};
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::sample::png::write_png;
use crate::sample::{Pipeline, SampleSettings, png_text};
use crate::train::config::SampleConfig;

impl Run<'_> {
    /// Renders samples now, with `asked` (a request's settings) or the run's own.
    pub(super) fn render_samples(
        &mut self,
        asked: Option<&SampleConfig>,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        self.render_with(self.pos.epoch, asked, sink)
    }

    /// Renders the configured prompts with the current adapters.
    pub(super) fn render_samples_at(
        &mut self,
        epoch: usize,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        self.render_with(epoch, None, sink)
    }

    fn render_with(
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
        let (Some(te), Some(vae), Some(tokenizer)) = (
            self.models.text_encoder.as_ref(),
            self.models.vae.as_ref(),
            self.models.tokenizer.as_ref(),
        ) else {
            return Err(Error::invalid(
                "sample",
                "set",
                "sampling needs a whole model in model.path",
            ));
        };
        let device = parse_device(&cfg.device)?;
        // Inference copies, off the autodiff graph.
        let (unet, te, vae) = (self.models.unet.valid(), te.valid(), vae.valid());
        let pipeline = Pipeline {
            unet: &unet,
            text_encoder: &te,
            vae: &vae,
            tokenizer,
            scheduler: &self.models.scheduler,
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
                clip_skip: cfg.clip_skip,
            };
            let image = pipeline.render(&settings, &device)?;
            let path = dir.join(format!(
                "{}-e{epoch:06}-s{:08}-{i:02}.png",
                cfg.output.name, self.pos.step
            ));
            let text = png_text(
                &settings,
                &self.models.model_name,
                Some((&cfg.output.name, 1.0)),
            );
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
}
