//! The `sample` executor's rendering with a FLUX.1 base model (a diffusers folder, or a BFL
//! transformer file with a FLUX.1 config folder): the model is loaded once, each
//! epoch's LoRA (kohya Flux names or PEFT) is applied at the job's strength, and every image is
//! rendered by the flow-matching pipeline (`FluxPipeline`) and written with its text chunks.
//!
//! Flux always samples with its flow-matching Euler schedule and the distilled guidance of
//! dev (the job's guidance scale); the negative prompt is not used, so the PNG text records the
//! sampler as Euler whatever the job asked for.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use loraflow_trainer::device::{Device, parse_device};
use loraflow_trainer::flux::{FluxModel, FluxParts, FluxPipeline};
use loraflow_trainer::sample::SampleSettings;
use loraflow_trainer::sample::png::RgbImage;
use loraflow_trainer::sample::scheduler::SamplerKind;
use tokio::sync::mpsc::UnboundedSender;

use super::error::Result;
use super::sample::{Job, Key, Renderer, SampleBase};

/// What rendering a list of jobs on a FLUX.1 base needs.
pub(super) struct FluxRun<'a> {
    /// A diffusers FLUX.1 folder, or a BFL transformer file.
    pub model: &'a Path,
    /// The diffusers FLUX.1 folder whose other parts and configs go with a transformer file.
    pub config_dir: Option<&'a Path>,
    pub strength: f64,
    pub base_name: &'a str,
    /// The device string (`cpu`, `vulkan`, ...).
    pub device: &'a str,
    pub stop: &'a AtomicBool,
    pub tx: &'a UnboundedSender<(Key, usize, PathBuf)>,
}

impl FluxRun<'_> {
    /// Renders `jobs` in order, loading each LoRA once.
    pub(super) fn render(&self, jobs: Vec<Job>) -> Result<()> {
        let device = &parse_device(self.device)?;
        let base = match self.config_dir {
            Some(dir) if self.model.is_file() => {
                FluxModel::load_single_file(self.model, &FluxParts::from_folder(dir), device)?
            }
            _ => FluxModel::load_diffusers(self.model, device)?,
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

impl SampleBase for FluxModel {
    fn default_size(&self) -> usize {
        self.config.default_image_size()
    }

    fn adapted(&self, lora: &Path, strength: f64, device: &Device) -> Result<Self> {
        Ok(self.with_lora(lora, strength, device)?.0)
    }

    /// Flux samples with its flow-matching Euler schedule whatever the job asked for.
    fn adjust(&self, settings: &mut SampleSettings) {
        settings.sampler = SamplerKind::Euler;
    }

    fn draw(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        Ok(FluxPipeline::new(self).render(settings, device)?)
    }
}

#[cfg(test)]
mod tests {
    use loraflow_trainer::sample::png::read_png_text;

    use super::super::error::Error;
    use super::*;

    fn trainer_fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../trainer/fixtures")
            .join(rel)
    }

    fn job(key: Key, lora: Option<PathBuf>, out: PathBuf) -> Job {
        Job {
            key,
            lora_name: if lora.is_some() {
                "tiny".into()
            } else {
                String::new()
            },
            lora,
            index: 0,
            settings: SampleSettings {
                prompt: "a red fox in the snow".into(),
                negative_prompt: String::new(),
                width: 32,
                height: 32,
                steps: 3,
                guidance_scale: 3.5,
                seed: 11,
                sampler: SamplerKind::Ddim,
                clip_skip: 1,
            },
            out,
        }
    }

    #[test]
    fn renders_the_base_and_a_lora_with_text_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let model = trainer_fixture("flux/pipeline");
        let run = FluxRun {
            model: &model,
            config_dir: None,
            strength: 0.8,
            base_name: "flux-tiny",
            device: "cpu",
            stop: &stop,
            tx: &tx,
        };
        let lora = trainer_fixture("flux/lora_files/kohya.safetensors");
        let (base_png, lora_png) = (dir.path().join("base.png"), dir.path().join("lora.png"));
        run.render(vec![
            job(Key::BASE, None, base_png.clone()),
            job(Key::epoch(1), Some(lora), lora_png.clone()),
        ])
        .unwrap();
        assert_eq!(rx.try_recv().unwrap().2, base_png);
        assert_eq!(rx.try_recv().unwrap().2, lora_png);
        let text = read_png_text(&lora_png).unwrap();
        let get = |k: &str| text.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("lora").as_deref(), Some("tiny"));
        assert_eq!(get("lora_strength").as_deref(), Some("0.8"));
        assert_eq!(get("sampler").as_deref(), Some("Euler"));
        assert_eq!(get("model").as_deref(), Some("flux-tiny"));
        let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
        let (base, adapted) = (pixels(&base_png), pixels(&lora_png));
        assert_eq!(base.len(), 32 * 32 * 3);
        assert_ne!(base, adapted, "the LoRA changes the image");
    }

    #[test]
    fn a_stop_request_cancels_before_rendering() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(true);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (model, config) = (
            trainer_fixture("flux/single_file/flux1-tiny-dev.safetensors"),
            trainer_fixture("flux/pipeline"),
        );
        let run = FluxRun {
            model: &model,
            config_dir: Some(&config),
            strength: 1.0,
            base_name: "flux-tiny",
            device: "cpu",
            stop: &stop,
            tx: &tx,
        };
        let out = dir.path().join("base.png");
        let err = run
            .render(vec![job(Key::BASE, None, out.clone())])
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert!(!out.exists());
    }
}
