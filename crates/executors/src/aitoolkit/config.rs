//! The job config ai-toolkit's `run.py` is run with, generated from a job's
//! parameters in the shape of ai-toolkit's own examples
//! (`config/examples/train_lora_flux_24gb.yaml` at
//! ostris/ai-toolkit@27a03a91f23eb1b757d5ec2e80ee3e129cfcc350) and with the
//! keys its classes read (`toolkit/config_modules.py`: `SaveConfig`,
//! `DatasetConfig`, `TrainConfig`, `ModelConfig`, `SampleConfig`,
//! `NetworkConfig`):
//!
//! ```yaml
//! job: extension
//! config:
//!   name: corgi                       # file names: corgi_000000015.safetensors, corgi.safetensors
//!   process:
//!     - type: sd_trainer
//!       training_folder: /work/output # saves in <training_folder>/<name>/
//!       device: cuda:0
//!       network: { type: lora, linear: 16, linear_alpha: 16 }
//!       save: { dtype: float16, save_every: 15, max_step_saves_to_keep: 3 }
//!       datasets: [ { folder_path: ..., caption_ext: txt, resolution: [1024], ... } ]
//!       train: { batch_size: 1, steps: 45, optimizer: adamw8bit, lr: 0.0001, ... }
//!       model: { name_or_path: ..., arch: flux, is_flux: true, quantize: true }
//!       sample: { sampler: flowmatch, sample_every: 15, prompts: [...], ... }
//! meta: { name: "[name]", version: "1.0" }
//! ```
//!
//! ai-toolkit reads the file after replacing `${VAR}` with environment
//! variables (`toolkit/config.py` `replace_env_vars_in_string`), so text
//! from a job (prompts, trigger word) is written with `${` broken up: a
//! prompt can neither fail the run nor read the worker's environment.

use std::path::{Path, PathBuf};

use loraflow_core::catalogue::ModelFamily;
use loraflow_core::sampling::SampleSettings;
use serde_norway::{Mapping, Value};

use super::error::{Error, Result};
use super::options::{AiToolkitModel, AiToolkitOptions};
use super::params::{StepPlan, TrainParams};

/// The files and names of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPaths {
    /// `training_folder`; ai-toolkit saves in `<training_folder>/<name>/`.
    pub training_folder: PathBuf,
    /// The folder of images and `.txt` captions.
    pub image_dir: PathBuf,
    /// `config.name`: the prefix of every saved file.
    pub name: String,
}

impl RunPaths {
    /// Where ai-toolkit writes the LoRA files (`save_root`).
    pub fn save_root(&self) -> PathBuf {
        self.training_folder.join(&self.name)
    }
}

/// What the family trains with: ai-toolkit's model flags and schedulers.
struct Family {
    arch: &'static str,
    flag: &'static str,
    noise_scheduler: &'static str,
    sampler: &'static str,
    quantize: bool,
}

fn family(model: &str, family: ModelFamily) -> Result<Family> {
    match family {
        // As train_lora_flux_24gb.yaml: flow matching, 8-bit transformer.
        ModelFamily::Flux => Ok(Family {
            arch: "flux",
            flag: "is_flux",
            noise_scheduler: "flowmatch",
            sampler: "flowmatch",
            quantize: true,
        }),
        // SampleConfig's sampler (ddpm); guidance, steps and size are the job's.
        ModelFamily::Sdxl => Ok(Family {
            arch: "sdxl",
            flag: "is_xl",
            noise_scheduler: "ddpm",
            sampler: "ddpm",
            quantize: false,
        }),
        other => Err(Error::UnsupportedFamily {
            model: model.to_owned(),
            family: other.to_string(),
        }),
    }
}

/// Text from a job, safe from ai-toolkit's `${VAR}` substitution.
pub fn literal(text: &str) -> String {
    text.replace("${", "$ {")
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn path(p: &Path) -> Value {
    s(p.to_string_lossy())
}

fn float(v: f64) -> Value {
    Value::from(v)
}

/// A mapping of the pairs that are not `None`, in order.
fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(s(k), v);
        }
    }
    Value::Mapping(m)
}

fn yaml(value: &toml::Value) -> Result<Value> {
    serde_norway::to_value(value).map_err(|e| Error::io("converting extra settings to YAML", e))
}

/// Merge `extra` into the mapping `section` of `process`, last, so it wins.
fn merge(process: &mut Mapping, section: &str, extra: &toml::Table) -> Result<()> {
    if extra.is_empty() {
        return Ok(());
    }
    let target = process
        .entry(s(section))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let Value::Mapping(target) = target else {
        return Err(Error::InvalidSettings(format!(
            "extra.{section}: {section} is not a section"
        )));
    };
    for (k, v) in extra {
        target.insert(s(k.as_str()), yaml(v)?);
    }
    Ok(())
}

/// Everything the config is made from.
#[derive(Debug, Clone, Copy)]
pub struct JobInputs<'a> {
    pub params: &'a TrainParams,
    pub plan: &'a StepPlan,
    pub family: ModelFamily,
    /// The base model's id, for messages.
    pub model_id: &'a str,
    pub model: &'a AiToolkitModel,
    /// `model.name_or_path` as resolved on this machine.
    pub name_or_path: &'a str,
    pub options: &'a AiToolkitOptions,
    pub paths: &'a RunPaths,
    /// The job's sample settings (prompts, size, seed, guidance, steps, negative prompt).
    pub sampling: &'a SampleSettings,
    /// The caption of an image without one (the trigger word or subject).
    pub default_caption: &'a str,
}

/// The job config, as a YAML value.
pub fn job_config(i: &JobInputs<'_>) -> Result<Value> {
    let p = i.params;
    let f = family(i.model_id, i.family)?;
    let flux = i.family == ModelFamily::Flux;
    let resolution = p.resolution.unwrap_or(1024);
    let prompts: Vec<Value> = i
        .sampling
        .prompts
        .iter()
        .map(|t| t.replace(['\n', '\r'], " ").trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(|t| s(literal(&t)))
        .collect();
    let sampling = !prompts.is_empty();

    let network = map([
        ("type", Some(s("lora"))),
        ("linear", Some(Value::from(p.network_dim.unwrap_or(16)))),
        (
            "linear_alpha",
            Some(float(
                p.network_alpha
                    .unwrap_or(f64::from(p.network_dim.unwrap_or(16))),
            )),
        ),
    ]);
    // Every epoch's file is kept: clean_up_saves deletes all but the newest
    // `max_step_saves_to_keep` step saves.
    let save = map([
        ("dtype", Some(s(i.options.save_dtype.as_str()))),
        ("save_every", Some(Value::from(i.plan.save_every))),
        ("max_step_saves_to_keep", Some(Value::from(i.plan.epochs))),
        ("push_to_hub", Some(Value::Bool(false))),
    ]);
    let dataset = map([
        ("folder_path", Some(path(&i.paths.image_dir))),
        ("caption_ext", Some(s("txt"))),
        ("default_caption", Some(s(literal(i.default_caption)))),
        ("caption_dropout_rate", p.caption_dropout.map(float)),
        ("shuffle_tokens", p.shuffle_tags.map(Value::Bool)),
        ("keep_tokens", p.keep_tokens.map(Value::from)),
        ("cache_latents_to_disk", Some(Value::Bool(true))),
        (
            "resolution",
            Some(Value::Sequence(vec![Value::from(resolution)])),
        ),
        ("num_repeats", Some(Value::from(p.num_repeats))),
    ]);
    // torch's LinearLR rises from a third of the rate by default; a linear
    // schedule here decays from the rate to 0, as sd-scripts' does.
    let scheduler_params = (p.lr_scheduler == Some("linear")).then(|| {
        map([
            ("start_factor", Some(float(1.0))),
            ("end_factor", Some(float(0.0))),
        ])
    });
    let train = map([
        ("batch_size", Some(Value::from(p.batch_size.unwrap_or(1)))),
        ("steps", Some(Value::from(i.plan.steps))),
        ("gradient_accumulation_steps", Some(Value::from(1))),
        (
            "gradient_accumulation",
            p.gradient_accumulation.filter(|n| *n > 1).map(Value::from),
        ),
        ("train_unet", Some(Value::Bool(true))),
        ("train_text_encoder", Some(Value::Bool(false))),
        ("gradient_checkpointing", Some(Value::Bool(true))),
        ("noise_scheduler", Some(s(f.noise_scheduler))),
        ("optimizer", p.optimizer.map(s)),
        ("lr", p.learning_rate.map(float)),
        ("lr_scheduler", p.lr_scheduler.map(s)),
        ("lr_scheduler_params", scheduler_params),
        ("max_grad_norm", p.max_grad_norm.map(float)),
        // Min-SNR weighting is a DDPM idea; FLUX.1 trains by flow matching.
        (
            "min_snr_gamma",
            p.min_snr_gamma.filter(|g| *g > 0.0 && !flux).map(float),
        ),
        (
            "noise_offset",
            p.noise_offset.filter(|o| *o > 0.0).map(float),
        ),
        ("dtype", Some(s(i.options.dtype.as_str()))),
        // Samples before training cost GPU time and belong to no epoch.
        ("skip_first_sample", Some(Value::Bool(true))),
        ("disable_sampling", (!sampling).then_some(Value::Bool(true))),
    ]);
    let model = map([
        ("name_or_path", Some(s(i.name_or_path))),
        ("arch", Some(s(f.arch))),
        (f.flag, Some(Value::Bool(true))),
        (
            "quantize",
            Some(Value::Bool(i.model.quantize.unwrap_or(f.quantize))),
        ),
        (
            "is_v_pred",
            p.v_prediction.filter(|_| !flux).map(Value::Bool),
        ),
    ]);
    let sample = map([
        ("sampler", Some(s(f.sampler))),
        ("sample_every", Some(Value::from(i.plan.save_every))),
        ("width", Some(Value::from(i.sampling.width))),
        ("height", Some(Value::from(i.sampling.height))),
        ("prompts", Some(Value::Sequence(prompts))),
        (
            "neg",
            Some(s(literal(
                &i.sampling.negative_prompt.replace(['\n', '\r'], " "),
            ))),
        ),
        (
            "seed",
            Some(Value::from(i.sampling.seed.min(u64::from(u32::MAX)))),
        ),
        ("walk_seed", Some(Value::Bool(true))),
        ("guidance_scale", Some(float(i.sampling.guidance_scale))),
        ("sample_steps", Some(Value::from(i.sampling.steps))),
    ]);
    let Value::Mapping(mut process) = map([
        ("type", Some(s("sd_trainer"))),
        ("training_folder", Some(path(&i.paths.training_folder))),
        ("device", Some(s(i.options.device.as_str()))),
        (
            "trigger_word",
            p.trigger_word.as_deref().map(|t| s(literal(t))),
        ),
        ("network", Some(network)),
        ("save", Some(save)),
        ("datasets", Some(Value::Sequence(vec![dataset]))),
        ("train", Some(train)),
        ("model", Some(model)),
        ("sample", Some(sample)),
    ]) else {
        unreachable!("map builds a mapping")
    };
    // The operator's word last: the model's keys, then the sections'.
    merge(&mut process, "model", &i.model.extra)?;
    for (section, extra) in &i.options.extra {
        if let Some(table) = extra.as_table() {
            merge(&mut process, section, table)?;
        }
    }

    Ok(map([
        ("job", Some(s("extension"))),
        (
            "config",
            Some(map([
                ("name", Some(s(i.paths.name.as_str()))),
                (
                    "process",
                    Some(Value::Sequence(vec![Value::Mapping(process)])),
                ),
            ])),
        ),
        (
            "meta",
            Some(map([
                ("name", Some(s("[name]"))),
                ("version", Some(s("1.0"))),
            ])),
        ),
    ]))
}

/// A config as YAML text.
pub fn to_yaml(config: &Value) -> Result<String> {
    serde_norway::to_string(config).map_err(|e| Error::io("writing the ai-toolkit job config", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_text_cannot_reach_the_environment() {
        assert_eq!(literal("a ${HOME} corgi"), "a $ {HOME} corgi");
        assert_eq!(literal("$5 corgi"), "$5 corgi");
    }
}
