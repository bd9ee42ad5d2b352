//! The `sample` executor's rendering with an SDXL base model: each epoch's LoRA (kohya SDXL
//! names) on the base, rendered with micro-conditioning at the sample size.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use loraflow_trainer::device::{Device, parse_device};
use loraflow_trainer::sample::SampleSettings;
use loraflow_trainer::sample::png::RgbImage;
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::sample::SdxlPipeline;
use tokio::sync::mpsc::UnboundedSender;

use super::error::Result;
use super::sample::{Job, Key, Renderer, SampleBase};

/// What rendering a list of jobs on an SDXL base needs.
pub(super) struct XlRun<'a> {
    /// A diffusers SDXL folder or an SGM single file.
    pub model: &'a Path,
    /// The config folder of a single file.
    pub config_dir: Option<&'a Path>,
    pub strength: f64,
    pub base_name: &'a str,
    /// The device string (`cpu`, `vulkan`, ...).
    pub device: &'a str,
    pub stop: &'a AtomicBool,
    pub tx: &'a UnboundedSender<(Key, usize, PathBuf)>,
}

impl XlRun<'_> {
    /// Renders `jobs` in order, loading each LoRA once.
    pub(super) fn render(&self, jobs: Vec<Job>) -> Result<()> {
        let device = &parse_device(self.device)?;
        let base = match self.config_dir {
            Some(dir) if self.model.is_file() => {
                StableDiffusionXl::load_single_file(self.model, dir, device)?
            }
            _ => StableDiffusionXl::load_diffusers(self.model, device)?,
        };
        Renderer {
            strength: self.strength,
            base_name: self.base_name,
            stop: self.stop,
            tx: self.tx,
        }
        .render(&base, jobs, device)
    }
}

impl SampleBase for StableDiffusionXl {
    fn default_size(&self) -> usize {
        self.config.default_image_size()
    }

    fn adapted(&self, lora: &Path, strength: f64, device: &Device) -> Result<Self> {
        Ok(self.with_lora(lora, strength, device)?.0)
    }

    fn draw(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        Ok(SdxlPipeline::new(self).render(settings, device)?)
    }
}
