//! Sample images rendered during training with the current adapters.

use burn::module::Module;

use super::prepare::Models;
use super::run::Run;
use super::{ProgressEvent, ProgressSink, SavedSamples};
use crate::clip::ClipTextModel;
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::sample::png::RgbImage;
use crate::sample::png::write_png;
use crate::sample::{Pipeline, SampleSettings, png_text};
use crate::sdxl::SdxlTextEncoders;
use crate::sdxl::sample::SdxlPipeline;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;

/// Inference copies of the models, off the autodiff graph.
struct Renderer {
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text: Text,
}

/// The text encoder(s) of a [`Renderer`].
enum Text {
    Sd(Box<ClipTextModel>),
    Sdxl(Box<SdxlTextEncoders>),
}

impl Renderer {
    fn new(m: &Models) -> Result<Self> {
        let whole = || {
            Error::invalid(
                "sample",
                "set",
                "sampling needs a whole model in model.path",
            )
        };
        let vae = m.vae.as_ref().ok_or_else(whole)?.valid();
        let text = match &m.sdxl {
            Some(xl) => Text::Sdxl(Box::new(xl.text.valid())),
            None => Text::Sd(Box::new(m.text_encoder.as_ref().ok_or_else(whole)?.valid())),
        };
        Ok(Self {
            unet: m.unet.valid(),
            vae,
            text,
        })
    }

    fn render(
        &self,
        m: &Models,
        settings: &SampleSettings,
        device: &burn::tensor::Device,
    ) -> Result<RgbImage> {
        let (unet, vae) = (&self.unet, &self.vae);
        match &self.text {
            Text::Sd(te) => Pipeline {
                unet,
                text_encoder: te,
                vae,
                tokenizer: m.tokenizer.as_ref().expect("a whole SD model"),
                scheduler: &m.scheduler,
            }
            .render(settings, device),
            Text::Sdxl(text) => {
                let xl = m.sdxl.as_ref().expect("an SDXL model");
                let pipeline = SdxlPipeline {
                    unet,
                    text,
                    vae,
                    tokenizers: &xl.tokenizers,
                    scheduler: &m.scheduler,
                };
                pipeline.render(settings, device)
            }
        }
    }
}
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

    pub(super) fn render_with(
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
        let device = parse_device(&cfg.device)?;
        let renderer = Renderer::new(&self.models)?;
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
            let image = renderer.render(&self.models, &settings, &device)?;
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
