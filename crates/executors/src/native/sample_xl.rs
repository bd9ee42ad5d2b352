//! The `sample` executor's rendering with an SDXL base model: each epoch's LoRA (kohya SDXL
//! names) on the base, rendered with micro-conditioning at the sample size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use loraflow_trainer::device::parse_device;
use loraflow_trainer::sample::png::write_png;
use loraflow_trainer::sample::png_text;
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::sample::SdxlPipeline;
use tokio::sync::mpsc::UnboundedSender;

use super::error::{Error, Result};
use super::sample::Job;

/// What rendering a list of jobs on an SDXL base needs.
pub(super) struct XlRun<'a> {
    /// A diffusers SDXL folder or an SGM single file.
    pub model: &'a Path,
    /// The config folder of a single file.
    pub config_dir: Option<&'a Path>,
    pub strength: f64,
    /// The sample size; the model's default when `None`.
    pub size: Option<usize>,
    pub base_name: &'a str,
    /// The device string (`cpu`, `vulkan`, ...).
    pub device: &'a str,
    pub stop: &'a AtomicBool,
    pub tx: &'a UnboundedSender<(u32, usize, PathBuf)>,
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
        let size = self
            .size
            .unwrap_or_else(|| base.config.default_image_size());
        let mut current: Option<(PathBuf, StableDiffusionXl)> = None;
        for mut job in jobs {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if current.as_ref().is_none_or(|(p, _)| *p != job.lora) {
                let (adapted, _) = base.with_lora(&job.lora, self.strength, device)?;
                current = Some((job.lora.clone(), adapted));
            }
            let model = &current.as_ref().expect("loaded above").1;
            job.settings.width = size;
            job.settings.height = size;
            let image = SdxlPipeline::new(model).render(&job.settings, device)?;
            let text = png_text(
                &job.settings,
                self.base_name,
                Some((&job.lora_name, self.strength)),
            );
            write_png(&job.out, &image, &text)?;
            let _ = self.tx.send((job.epoch, job.index, job.out));
        }
        Ok(())
    }
}
