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
use super::sample::{Job, Key};

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
        // A size of 0 is the model's own.
        let size = base.config.default_image_size();
        let mut current: Option<(PathBuf, StableDiffusionXl)> = None;
        for mut job in jobs {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let model = match &job.lora {
                None => &base,
                Some(lora) => {
                    if current.as_ref().is_none_or(|(p, _)| p != lora) {
                        let (adapted, _) = base.with_lora(lora, self.strength, device)?;
                        current = Some((lora.clone(), adapted));
                    }
                    &current.as_ref().expect("loaded above").1
                }
            };
            for side in [&mut job.settings.width, &mut job.settings.height] {
                if *side == 0 {
                    *side = size;
                }
            }
            let image = SdxlPipeline::new(model).render(&job.settings, device)?;
            let text = png_text(
                &job.settings,
                self.base_name,
                job.lora
                    .as_ref()
                    .map(|_| (job.lora_name.as_str(), self.strength)),
            );
            write_png(&job.out, &image, &text)?;
            let _ = self.tx.send((job.key, job.index, job.out));
        }
        Ok(())
    }
}
