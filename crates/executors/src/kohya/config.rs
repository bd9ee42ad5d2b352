//! The two TOML files sd-scripts is run with, generated from a job's
//! parameters:
//!
//! - the dataset config (`--dataset_config`), in the schema of
//!   `library/config_util.py` as `docs/config_README-en.md` describes it:
//!   `[general]`, `[[datasets]]` (resolution, batch_size) and
//!   `[[datasets.subsets]]` (image_dir, num_repeats, caption_extension,
//!   shuffle_caption, keep_tokens, class_tokens, caption_dropout_rate);
//! - the training config (`--config_file`), read by
//!   `train_util.read_config_from_file`, which flattens one level of tables
//!   ("combine all sections into one") and hands the keys to argparse as a
//!   namespace. It is written flat, as sd-scripts' own `--output_config`
//!   writes it, so a key can never appear twice.
//!
//! Keys for options that do not apply to the model family, or that the job
//! leaves at "off", are left out so sd-scripts' defaults hold.

use std::path::{Path, PathBuf};

use loraflow_core::catalogue::ModelFamily;
use loraflow_core::sampling::SampleSettings;
use toml::Value;

use super::error::{Error, Result};
use super::options::{KohyaModel, KohyaOptions};
use super::params::{Prediction, TrainParams};

/// The files and names of one run, as the generated configs name them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPaths {
    /// The checkpoint trained from (`pretrained_model_name_or_path`).
    pub checkpoint: PathBuf,
    /// The `<num_repeats>_<subject>` folder with the images and captions.
    pub image_dir: PathBuf,
    /// Where the dataset config is written.
    pub dataset_config: PathBuf,
    pub output_dir: PathBuf,
    /// Output files are `<output_name>-000001.safetensors`, ..., and
    /// `<output_name>.safetensors` for the last epoch.
    pub output_name: String,
    /// The sample-prompt file, when the job has prompts.
    pub sample_prompts: Option<PathBuf>,
}

fn path(p: &Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

fn int(v: impl Into<i64>) -> Value {
    Value::Integer(v.into())
}

fn put(table: &mut toml::Table, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        table.insert(key.to_owned(), v);
    }
}

/// Buckets from at most 256 px (sd-scripts' default `min_bucket_reso`) up to
/// twice the training resolution, in 64 px steps. sd-scripts asserts that the
/// resolution lies between the two.
fn bucket_bounds(resolution: u32) -> (u32, u32) {
    let min = (resolution.min(256) / 64 * 64).max(64).min(resolution);
    (min, resolution * 2)
}

/// The dataset config: one dataset with one subset, the image folder.
/// `class_tokens` is sd-scripts' caption for an image without a caption file.
pub fn dataset_config(params: &TrainParams, image_dir: &Path, class_tokens: &str) -> toml::Table {
    let mut general = toml::Table::new();
    general.insert("enable_bucket".into(), Value::Boolean(true));
    general.insert("bucket_no_upscale".into(), Value::Boolean(true));
    general.insert("bucket_reso_steps".into(), int(64));
    if let Some(res) = params.resolution {
        let (min, max) = bucket_bounds(res);
        general.insert("min_bucket_reso".into(), int(min));
        general.insert("max_bucket_reso".into(), int(max));
    }

    let mut subset = toml::Table::new();
    subset.insert("image_dir".into(), path(image_dir));
    subset.insert("num_repeats".into(), int(params.num_repeats));
    // Captions are always written as .txt (sd-scripts' default is .caption).
    subset.insert("caption_extension".into(), Value::String(".txt".into()));
    subset.insert(
        "class_tokens".into(),
        Value::String(class_tokens.to_owned()),
    );
    put(
        &mut subset,
        "shuffle_caption",
        params.shuffle_tags.map(Value::Boolean),
    );
    put(&mut subset, "keep_tokens", params.keep_tokens.map(int));
    put(
        &mut subset,
        "caption_dropout_rate",
        params
            .caption_dropout
            .filter(|p| *p > 0.0)
            .map(Value::Float),
    );

    let mut dataset = toml::Table::new();
    put(&mut dataset, "resolution", params.resolution.map(int));
    put(&mut dataset, "batch_size", params.batch_size.map(int));
    dataset.insert("subsets".into(), Value::Array(vec![Value::Table(subset)]));

    let mut config = toml::Table::new();
    config.insert("general".into(), Value::Table(general));
    config.insert("datasets".into(), Value::Array(vec![Value::Table(dataset)]));
    config
}

/// The training config for `train_network.py` and its SDXL and FLUX.1
/// variants.
pub fn training_config(
    params: &TrainParams,
    family: ModelFamily,
    paths: &RunPaths,
    options: &KohyaOptions,
    model: &KohyaModel,
) -> toml::Table {
    let flux = family == ModelFamily::Flux;
    let mut t = toml::Table::new();

    // Model.
    t.insert(
        "pretrained_model_name_or_path".into(),
        path(&paths.checkpoint),
    );
    if family == ModelFamily::Sd2 {
        t.insert("v2".into(), Value::Boolean(true));
    }
    // Without an explicit target, SD2 models train as the 768-v checkpoints
    // most SD2 LoRAs are made for.
    let v_prediction = params.prediction == Some(Prediction::VPrediction)
        || (params.prediction.is_none() && family == ModelFamily::Sd2);
    if !flux && v_prediction {
        t.insert("v_parameterization".into(), Value::Boolean(true));
    }
    // Only SD1.x takes clip_skip: sd-scripts warns "v2 with clip_skip will
    // be unexpected", SDXL ignores it and FLUX.1 has no CLIP skip.
    if family == ModelFamily::Sd15 {
        put(&mut t, "clip_skip", params.clip_skip.map(int));
    }

    // Network.
    let module = if flux {
        "networks.lora_flux"
    } else {
        "networks.lora"
    };
    t.insert("network_module".into(), Value::String(module.into()));
    put(&mut t, "network_dim", params.network_dim.map(int));
    put(
        &mut t,
        "network_alpha",
        params.network_alpha.map(Value::Float),
    );
    // LoCon: networks.lora takes the convolution rank and alpha as network arguments (its
    // own conv_alpha default is 1; the catalogue's 0 means the rank, written out).
    if let Some(dim) = params.conv_dim.filter(|d| *d > 0) {
        let alpha = params
            .conv_alpha
            .filter(|a| *a > 0.0)
            .unwrap_or(f64::from(dim));
        t.insert(
            "network_args".into(),
            Value::Array(vec![
                Value::String(format!("conv_dim={dim}")),
                Value::String(format!("conv_alpha={alpha}")),
            ]),
        );
    }

    // Optimiser and schedule. A text-encoder rate of 0 means "UNet only",
    // which sd-scripts spells network_train_unet_only; FLUX.1 LoRAs train
    // the transformer only.
    t.insert(
        "optimizer_type".into(),
        Value::String(
            params
                .optimizer
                .unwrap_or(super::params::Optimizer::AdamW)
                .kohya_name()
                .into(),
        ),
    );
    put(
        &mut t,
        "learning_rate",
        params.learning_rate.map(Value::Float),
    );
    put(&mut t, "unet_lr", params.unet_lr.map(Value::Float));
    match params.text_encoder_lr {
        _ if flux => {
            t.insert("network_train_unet_only".into(), Value::Boolean(true));
        }
        Some(0.0) => {
            t.insert("network_train_unet_only".into(), Value::Boolean(true));
        }
        lr => put(&mut t, "text_encoder_lr", lr.map(Value::Float)),
    }
    put(
        &mut t,
        "lr_scheduler",
        params.lr_scheduler.clone().map(Value::String),
    );
    put(&mut t, "lr_warmup_steps", params.lr_warmup_steps.map(int));
    put(
        &mut t,
        "max_grad_norm",
        params.max_grad_norm.map(Value::Float),
    );
    // sd-scripts' held-out split (`--validation_split`): it logs `loss/validation/*` to its
    // TensorBoard logs and shows `val_epoch_avg_loss` on its epoch validation bar.
    put(
        &mut t,
        "validation_split",
        params
            .validation_split
            .filter(|v| *v > 0.0)
            .map(Value::Float),
    );

    // FLUX.1 by flow matching, as sd-scripts' docs/flux_train_network.md
    // trains it (at kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb):
    // no guidance distillation target, flux_shift timesteps, raw prediction.
    if flux {
        t.insert("guidance_scale".into(), Value::Float(1.0));
        t.insert(
            "timestep_sampling".into(),
            Value::String("flux_shift".into()),
        );
        t.insert("model_prediction_type".into(), Value::String("raw".into()));
    }

    // Loss. min_snr_gamma and noise_offset act on the DDPM noise schedule;
    // FLUX.1 trains by flow matching, where neither applies. 0 means off.
    if !flux {
        put(
            &mut t,
            "min_snr_gamma",
            params.min_snr_gamma.filter(|g| *g > 0.0).map(Value::Float),
        );
        put(
            &mut t,
            "noise_offset",
            params.noise_offset.filter(|o| *o > 0.0).map(Value::Float),
        );
    }

    // Run.
    t.insert("dataset_config".into(), path(&paths.dataset_config));
    t.insert("max_train_epochs".into(), int(params.epochs));
    put(&mut t, "train_batch_size", params.batch_size.map(int));
    put(
        &mut t,
        "gradient_accumulation_steps",
        params.gradient_accumulation.map(int),
    );
    put(
        &mut t,
        "seed",
        params
            .seed
            .map(|s| int(i64::try_from(s).unwrap_or(i64::MAX))),
    );
    t.insert(
        "mixed_precision".into(),
        Value::String(options.mixed_precision.as_str().into()),
    );
    if options.cache_latents {
        t.insert("cache_latents".into(), Value::Boolean(true));
    }
    // Plain "%(message)s" log lines on stdout instead of rich's boxed,
    // wrapped ones on stderr (library/utils.py setup_logging).
    t.insert("console_log_simple".into(), Value::Boolean(true));

    // Saving.
    t.insert("output_dir".into(), path(&paths.output_dir));
    t.insert(
        "output_name".into(),
        Value::String(paths.output_name.clone()),
    );
    t.insert("save_model_as".into(), Value::String("safetensors".into()));
    put(
        &mut t,
        "save_every_n_epochs",
        params.save_every_n_epochs.map(int),
    );

    // Sampling at each save.
    if let Some(prompts) = &paths.sample_prompts {
        t.insert("sample_prompts".into(), path(prompts));
        t.insert(
            "sample_every_n_epochs".into(),
            int(params.save_every_n_epochs.unwrap_or(1)),
        );
        t.insert(
            "sample_sampler".into(),
            Value::String(params.sample_sampler.unwrap_or("euler_a").into()),
        );
    }

    // The operator's word last: the model's keys, then the global ones.
    // Settings validation keeps them off the keys loraflow reads back.
    for (k, v) in model.extra_config.iter().chain(options.extra_config.iter()) {
        t.insert(k.clone(), v.clone());
    }
    t
}

/// sd-scripts' prompt file: one prompt a line with `--w`/`--h` (size), `--d` (seed; prompt `i`
/// gets `seed + i`), `--s` (steps), `--l` (guidance scale) and `--n` (negative prompt) options,
/// as `train_util.sample_images` parses them.
pub fn sample_prompts(s: &SampleSettings) -> String {
    // A prompt is one line, and " --" would start an option.
    let line = |text: &str| text.replace(['\n', '\r'], " ").replace(" --", " -");
    let negative = line(&s.negative_prompt);
    let mut out = String::new();
    for (i, prompt) in s
        .prompts
        .iter()
        .map(|p| line(p))
        .filter(|p| !p.trim().is_empty())
        .enumerate()
    {
        out.push_str(prompt.trim());
        out.push_str(&format!(
            " --w {} --h {} --d {} --s {} --l {}",
            s.width,
            s.height,
            s.seed + i as u64,
            s.steps,
            s.guidance_scale
        ));
        if !negative.trim().is_empty() {
            out.push_str(&format!(" --n {}", negative.trim()));
        }
        out.push('\n');
    }
    out
}

/// A config as TOML text.
pub fn to_toml(table: &toml::Table) -> Result<String> {
    toml::to_string(table).map_err(|e| Error::io("writing an sd-scripts config", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_hold_the_resolution() {
        assert_eq!(bucket_bounds(512), (256, 1024));
        assert_eq!(bucket_bounds(1024), (256, 2048));
        assert_eq!(bucket_bounds(192), (192, 384));
        assert_eq!(bucket_bounds(32), (32, 64));
    }

    #[test]
    fn prompts_are_single_lines_without_options_injected() {
        let text = sample_prompts(&SampleSettings {
            prompts: vec![
                "a corgi\non grass --n ugly".into(),
                "  ".into(),
                "a cat".into(),
            ],
            negative_prompt: "blurry --s 1".into(),
            width: 512,
            height: 768,
            seed: 7,
            steps: 12,
            guidance_scale: 5.5,
            ..SampleSettings::default()
        });
        assert_eq!(
            text,
            "a corgi on grass -n ugly --w 512 --h 768 --d 7 --s 12 --l 5.5 --n blurry -s 1\n\
             a cat --w 512 --h 768 --d 8 --s 12 --l 5.5 --n blurry -s 1\n"
        );
    }
}
