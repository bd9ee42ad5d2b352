//! A job's parameters as the native trainer's configuration.
//!
//! The catalogue has resolved and bounded the parameters already. What the native engine runs
//! (its schedules, optimisers, prediction types, and its resolution rule) is in the tables
//! below, which this mapping reads and [`rules`] hands to the catalogue: the schema offers for
//! `native` exactly these, and a job asking for anything else is refused at submit. The checks
//! here still refuse them, for a job created before a catalogue change. Parameters the native
//! engine does not know are ignored. `unet_lr`, when present, sets the UNet adapters' rate and
//! wins over `learning_rate`, as in sd-scripts; `text_encoder_lr` above 0 trains text-encoder
//! adapters. `validation_split` above 0 holds that fraction of the images out of training and
//! measures the loss on them at every saved LoRA; a `validation/` folder at the dataset's root
//! is held out instead, whole. `conv_dim` above 0 adds adapters on the UNet's convolutions
//! (sd-scripts' LoCon).
//!
//! A FLUX.1 model (family `flux`) trains by flow matching: `timestep_sampling`,
//! `sigmoid_scale`, `discrete_flow_shift`, `weighting_scheme` and `guidance_scale` set the
//! trainer's `objective.flow`, the adapters go on [`FLUX_TARGETS`], and the SD parameters
//! that act on the DDPM schedule or the text encoder (`min_snr_gamma`, `noise_offset`,
//! `prediction_type`, `clip_skip`, `text_encoder_lr`) are refused by name when a job sets
//! them; the flow parameters are refused for other families.

use std::collections::BTreeMap;
use std::path::PathBuf;

use loraflow_core::catalogue::{Engine, EngineRules, ModelFamily, Multiple, ParamValue, Params};
use loraflow_trainer::TrainConfig;
use loraflow_trainer::data::{CaptionOptions, ImageDatasetConfig};
use loraflow_trainer::flux::lora::FLUX_TARGETS;
use loraflow_trainer::lora::targets::CONV;
use loraflow_trainer::schedule::Prediction;
use loraflow_trainer::train::config::{BaseWeights, TextEncoderTraining};
use loraflow_trainer::train::flow::FlowObjective;
use loraflow_trainer::train::flow_timesteps::{LossWeighting, TimestepSampling};
use loraflow_trainer::train::lr::{LrSchedule, LrScheduleKind};
use loraflow_trainer::train::validation::ValidationConfig;

use super::error::{Error, Result};

/// The learning-rate schedules the native engine runs, by catalogue name. `constant_with_warmup`
/// is `constant`: every schedule warms up over `lr_warmup_steps`.
pub const LR_SCHEDULERS: [(&str, LrScheduleKind); 4] = [
    ("constant", LrScheduleKind::Constant),
    ("constant_with_warmup", LrScheduleKind::Constant),
    ("linear", LrScheduleKind::Linear),
    ("cosine", LrScheduleKind::Cosine),
];

/// The optimisers the native engine runs (the trainer has AdamW only).
pub const OPTIMIZERS: [&str; 1] = ["adamw"];

/// Precisions the frozen base UNet can be held in while training.
pub const BASE_WEIGHTS: [(&str, BaseWeights); 2] =
    [("f32", BaseWeights::F32), ("bf16", BaseWeights::Bf16)];

/// What the UNet is trained to predict; `auto` follows the model's scheduler config.
pub const PREDICTION_TYPES: [(&str, Option<Prediction>); 3] = [
    ("auto", None),
    ("epsilon", Some(Prediction::Epsilon)),
    ("v_prediction", Some(Prediction::VPrediction)),
];

/// How FLUX.1's noise levels are drawn, by catalogue name (`timestep_sampling`).
pub const TIMESTEP_SAMPLINGS: [&str; 6] = [
    "flux_shift",
    "shift",
    "sigmoid",
    "uniform",
    "logit_normal",
    "mode",
];

/// FLUX.1's loss weightings, by catalogue name (`weighting_scheme`).
pub const WEIGHTING_SCHEMES: [(&str, LossWeighting); 3] = [
    ("none", LossWeighting::None),
    ("sigma_sqrt", LossWeighting::SigmaSqrt),
    ("cosmap", LossWeighting::Cosmap),
];

/// The parameters of FLUX.1's flow-matching objective.
pub const FLOW_PARAMS: [&str; 5] = [
    "timestep_sampling",
    "sigmoid_scale",
    "discrete_flow_shift",
    "weighting_scheme",
    "guidance_scale",
];

/// What the native engine runs, for the catalogue (see
/// [`loraflow_core::catalogue::engine_rules`]): the tables above, and the resolution rule the
/// trainer's buckets enforce (a positive multiple of what the model's VAE and UNet downsample
/// by, `PipelineConfig::pixel_multiple`).
pub fn rules() -> EngineRules {
    EngineRules::new(Engine::Native)
        .choices("lr_scheduler", LR_SCHEDULERS.map(|(name, _)| name))
        .choices("optimizer", OPTIMIZERS)
        .choices("prediction_type", PREDICTION_TYPES.map(|(name, _)| name))
        .choices("base_weights", BASE_WEIGHTS.map(|(name, _)| name))
        .choices("timestep_sampling", TIMESTEP_SAMPLINGS)
        .choices("weighting_scheme", WEIGHTING_SCHEMES.map(|(name, _)| name))
        .multiple("resolution", Multiple::ModelPixels)
        .choices(
            loraflow_core::sampling::SAMPLER,
            super::sampling::SAMPLERS.map(|(name, _)| name),
        )
        .multiple(loraflow_core::sampling::WIDTH, Multiple::ModelPixels)
        .multiple(loraflow_core::sampling::HEIGHT, Multiple::ModelPixels)
}

/// `value` in a `(name, value)` table.
fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

struct Reader<'a>(&'a Params);

impl Reader<'_> {
    fn uint(&self, name: &str) -> Result<Option<usize>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Int(v)) if *v >= 0 => Ok(Some(*v as usize)),
            Some(v) => Err(Error::param(
                name,
                format!("{v} must be a whole number of 0 or more"),
            )),
        }
    }

    fn positive(&self, name: &str) -> Result<Option<usize>> {
        match self.uint(name)? {
            Some(0) => Err(Error::param(name, "0 must be at least 1")),
            v => Ok(v),
        }
    }

    fn float(&self, name: &str) -> Result<Option<f64>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(Error::param(
                    name,
                    format!("{v} must be a finite number of 0 or more"),
                )),
            },
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::param(name, format!("{v} must be true or false"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(Error::param(name, format!("{v} must be a string"))),
        }
    }
}

/// The folder of a dataset whose images are held out for the validation loss.
pub const VALIDATION_FOLDER: &str = "validation";

/// Where a run's inputs and outputs are.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The base model and, for a single file, its config folder.
    pub model: (PathBuf, Option<PathBuf>),
    /// The dataset folder.
    pub dataset: PathBuf,
    /// Captions replacing sidecars (from a labelling step).
    pub captions: BTreeMap<String, String>,
    /// Output folder.
    pub output: PathBuf,
    /// File stem of the LoRA files.
    pub name: String,
    /// Latent and text cache.
    pub cache: Option<PathBuf>,
}

/// Whether a job on `family` (`None`: a model the catalogue does not know, judged by its
/// folder) trains a FLUX.1 model.
pub fn is_flux(
    family: Option<ModelFamily>,
    model: &std::path::Path,
    config_dir: Option<&std::path::Path>,
) -> bool {
    use loraflow_trainer::flux::model::is_flux_dir;
    match family {
        Some(f) => f == ModelFamily::Flux,
        // A diffusers FLUX.1 folder, or a BFL transformer file with a FLUX.1 config folder.
        None if model.is_dir() => is_flux_dir(model),
        None => model.is_file() && config_dir.is_some_and(is_flux_dir),
    }
}

/// The flow-matching objective of a FLUX.1 job.
fn flow_objective(p: &Reader<'_>) -> Result<FlowObjective> {
    let defaults = FlowObjective::default();
    let sigmoid_scale = p.float("sigmoid_scale")?.unwrap_or(1.0);
    let shift = p.float("discrete_flow_shift")?.unwrap_or(3.1582);
    let timestep_sampling = match p.string("timestep_sampling")?.unwrap_or("flux_shift") {
        "flux_shift" => TimestepSampling::FluxShift { sigmoid_scale },
        "shift" => TimestepSampling::Shift {
            sigmoid_scale,
            shift,
        },
        "sigmoid" => TimestepSampling::Sigmoid { sigmoid_scale },
        "uniform" => TimestepSampling::Uniform,
        // diffusers' defaults for the density's own parameters.
        "logit_normal" => TimestepSampling::LogitNormal {
            logit_mean: 0.0,
            logit_std: 1.0,
            shift,
        },
        "mode" => TimestepSampling::Mode {
            mode_scale: 1.29,
            shift,
        },
        other => {
            return Err(Error::param(
                "timestep_sampling",
                format!("{other:?} must be one of {}", TIMESTEP_SAMPLINGS.join(", ")),
            ));
        }
    };
    let weighting = match p.string("weighting_scheme")? {
        None => defaults.weighting,
        Some(name) => lookup(&WEIGHTING_SCHEMES, name).ok_or_else(|| {
            Error::param(
                "weighting_scheme",
                format!(
                    "{name:?} must be one of {}",
                    WEIGHTING_SCHEMES.map(|(n, _)| n).join(", ")
                ),
            )
        })?,
    };
    Ok(FlowObjective {
        timestep_sampling,
        weighting,
        guidance: p.float("guidance_scale")?.unwrap_or(defaults.guidance),
    })
}

/// Refuses, by name, the SD parameters a FLUX.1 job sets (they act on the DDPM noise schedule
/// or train the text encoder, neither of which a Flux run has).
fn refuse_sd_params(p: &Reader<'_>) -> Result<()> {
    let flow = "FLUX.1 trains by flow matching, with no DDPM noise schedule";
    if let Some(g) = p.float("min_snr_gamma")?.filter(|g| *g > 0.0) {
        return Err(Error::param(
            "min_snr_gamma",
            format!("{g} is not available for FLUX.1: {flow} to weight; leave it unset"),
        ));
    }
    if let Some(o) = p.float("noise_offset")?.filter(|o| *o > 0.0) {
        return Err(Error::param(
            "noise_offset",
            format!("{o} is not available for FLUX.1: {flow}; leave it unset"),
        ));
    }
    if let Some(t) = p.string("prediction_type")?.filter(|t| *t != "auto") {
        return Err(Error::param(
            "prediction_type",
            format!(
                "{t:?} is not available for FLUX.1, which predicts the flow (noise − image) \
                 as it is; leave it unset"
            ),
        ));
    }
    if let Some(n) = p.positive("clip_skip")?.filter(|n| *n != 1) {
        return Err(Error::param(
            "clip_skip",
            format!(
                "{n} is not available for FLUX.1, which conditions on T5's last layer and \
                 CLIP's pooled output; leave it unset"
            ),
        ));
    }
    if let Some(n) = p.uint("conv_dim")?.filter(|n| *n > 0) {
        return Err(Error::param(
            "conv_dim",
            format!(
                "{n} is not available for FLUX.1, whose transformer has no convolutions to \
                 adapt; leave it unset or 0"
            ),
        ));
    }
    if let Some(lr) = p.float("text_encoder_lr")?.filter(|lr| *lr > 0.0) {
        return Err(Error::param(
            "text_encoder_lr",
            format!(
                "{lr} is not available for FLUX.1: its text encoders are not trained (their \
                 outputs are cached once); leave it unset or 0"
            ),
        ));
    }
    Ok(())
}

/// The trainer configuration for a job's parameters, for a model of `family` (`None`: one the
/// catalogue does not know, judged by its folder).
pub fn train_config(
    params: &Params,
    family: Option<ModelFamily>,
    paths: RunPaths,
    device: &str,
) -> Result<TrainConfig> {
    let p = Reader(params);
    let flux = is_flux(family, &paths.model.0, paths.model.1.as_deref());
    if flux {
        refuse_sd_params(&p)?;
    } else if let Some(name) = FLOW_PARAMS.iter().find(|n| params.contains_key(**n)) {
        return Err(Error::param(
            name,
            "is a setting of FLUX.1's flow-matching objective; this model is not FLUX.1",
        ));
    }
    let resolution = p.positive("resolution")?.unwrap_or(512);
    let split = p.float("validation_split")?.unwrap_or(0.0);
    if split >= 1.0 {
        return Err(Error::param(
            "validation_split",
            format!("{split} must be a fraction below 1 (typically 0.1 to 0.2)"),
        ));
    }
    let folder = paths.dataset.join(VALIDATION_FOLDER);
    let validation = if folder.is_dir() {
        let mut v = ValidationConfig::split(0.0);
        v.dir = Some(folder);
        Some(v)
    } else if split > 0.0 {
        Some(ValidationConfig::split(split))
    } else {
        None
    };
    let mut images = ImageDatasetConfig::new(paths.dataset, resolution);
    images.num_repeats = p.positive("num_repeats")?.unwrap_or(1);
    images.trigger_word = p
        .string("trigger_word")?
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    images.captions = CaptionOptions {
        shuffle_tags: p.bool("shuffle_tags")?.unwrap_or(false),
        keep_tokens: p.uint("keep_tokens")?.unwrap_or(0),
        dropout: p.float("caption_dropout")?.unwrap_or(0.0),
    };
    if images.captions.dropout > 1.0 {
        return Err(Error::param(
            "caption_dropout",
            format!(
                "{} must be a probability between 0 and 1",
                images.captions.dropout
            ),
        ));
    }
    images.caption_overrides = paths.captions;
    images.cache_dir = paths.cache;

    let (model, config_dir) = paths.model;
    let mut c = TrainConfig::for_images(model, images, paths.output, &paths.name);
    c.model.config_dir = config_dir;
    c.validation = validation;
    c.device = device.to_string();
    if let Some(n) = p.positive("epochs")? {
        c.epochs = n;
    }
    if let Some(n) = p.positive("batch_size")? {
        c.batch_size = n;
    }
    if let Some(n) = p.positive("gradient_accumulation")? {
        c.gradient_accumulation_steps = n;
    }
    if let Some(n) = p.positive("network_dim")? {
        c.network.rank = n;
    }
    // kohya: an alpha of 0 means alpha = rank.
    c.network.alpha = match p.float("network_alpha")? {
        Some(a) if a > 0.0 => a,
        _ => c.network.rank as f64,
    };
    // sd-scripts' LoCon (`conv_dim`): adapters on the resnet and resampler convolutions too,
    // the k×k ones at `conv_dim`, the 1×1 ones and the time projections at `network_dim`.
    if let Some(rank) = p.uint("conv_dim")?.filter(|r| *r > 0) {
        c.network
            .targets
            .extend(CONV.iter().map(|pattern| pattern.to_string()));
        c.network.conv_rank = Some(rank);
        c.network.conv_alpha = Some(match p.float("conv_alpha")? {
            Some(a) if a > 0.0 => a,
            _ => rank as f64,
        });
    }
    let lr = p.float("unet_lr")?.or(p.float("learning_rate")?);
    match lr {
        Some(v) if v > 0.0 => c.optimizer.learning_rate = v,
        Some(v) => {
            let name = if params.contains_key("unet_lr") {
                "unet_lr"
            } else {
                "learning_rate"
            };
            return Err(Error::param(name, format!("{v} must be above 0")));
        }
        None => c.optimizer.learning_rate = 1e-4,
    }
    if let Some(te_lr) = p.float("text_encoder_lr")?
        && te_lr > 0.0
    {
        c.text_encoder = Some(TextEncoderTraining::new(te_lr));
    }
    if let Some(name) = p.string("optimizer")?
        && !OPTIMIZERS.contains(&name)
    {
        return Err(Error::param(
            "optimizer",
            format!(
                "{name:?} is not available in the native engine; use {}",
                OPTIMIZERS.join(", ")
            ),
        ));
    }
    let kind = match p.string("lr_scheduler")? {
        None => LrScheduleKind::Constant,
        Some(name) => lookup(&LR_SCHEDULERS, name).ok_or_else(|| {
            Error::param(
                "lr_scheduler",
                format!(
                    "{name:?} is not available in the native engine; use {}",
                    LR_SCHEDULERS.map(|(n, _)| n).join(", ")
                ),
            )
        })?,
    };
    c.lr_schedule = LrSchedule {
        kind,
        warmup_steps: p.uint("lr_warmup_steps")?.unwrap_or(0),
    };
    c.objective.min_snr_gamma = p.float("min_snr_gamma")?.filter(|g| *g > 0.0);
    c.objective.noise_offset = p.float("noise_offset")?.unwrap_or(0.0);
    // Unset follows the model's scheduler config; a value that contradicts it is refused
    // when the trainer reads the model.
    c.objective.prediction = match p.string("prediction_type")? {
        None => None,
        Some(name) => lookup(&PREDICTION_TYPES, name).ok_or_else(|| {
            Error::param(
                "prediction_type",
                format!(
                    "{name:?} must be one of {}",
                    PREDICTION_TYPES.map(|(n, _)| n).join(", ")
                ),
            )
        })?,
    };
    if let Some(name) = p.string("base_weights")? {
        c.model.base_weights = lookup(&BASE_WEIGHTS, name).ok_or_else(|| {
            Error::param(
                "base_weights",
                format!(
                    "{name:?} must be one of {}",
                    BASE_WEIGHTS.map(|(n, _)| n).join(", ")
                ),
            )
        })?;
    }
    if flux {
        c.network.targets = FLUX_TARGETS.iter().map(|t| t.to_string()).collect();
        c.objective.flow = Some(flow_objective(&p)?);
    }
    c.gradient_checkpointing = p.bool("gradient_checkpointing")?.unwrap_or(false);
    if let Some(n) = p.positive("clip_skip")? {
        c.clip_skip = n;
    }
    c.output.save_every_n_epochs = p.positive("save_every_n_epochs")?;
    c.max_grad_norm = p.float("max_grad_norm")?.filter(|n| *n > 0.0);
    if let Some(seed) = p.uint("seed")? {
        c.seed = seed as u64;
    }
    c.validate().map_err(to_param_error)?;
    Ok(c)
}

/// The job parameter behind a trainer configuration field.
fn param_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "dataset.resolution" | "dataset.buckets" | "dataset.buckets.step" => "resolution",
        "dataset.num_repeats" => "num_repeats",
        "dataset.captions.dropout" => "caption_dropout",
        "dataset.captions.shuffle_tags" => "shuffle_tags",
        "objective.flow.timestep_sampling.sigmoid_scale" => "sigmoid_scale",
        "objective.flow.timestep_sampling.shift" => "discrete_flow_shift",
        "objective.flow.guidance" => "guidance_scale",
        "network.rank" => "network_dim",
        "network.alpha" => "network_alpha",
        "network.conv_rank" => "conv_dim",
        "network.conv_alpha" => "conv_alpha",
        "optimizer.learning_rate" => "learning_rate",
        "text_encoder.learning_rate" => "text_encoder_lr",
        "batch_size" => "batch_size",
        "gradient_accumulation_steps" => "gradient_accumulation",
        "epochs" => "epochs",
        "max_grad_norm" => "max_grad_norm",
        "objective.noise_offset" => "noise_offset",
        "objective.min_snr_gamma" => "min_snr_gamma",
        "objective.prediction" => "prediction_type",
        "model.base_weights" => "base_weights",
        "clip_skip" => "clip_skip",
        "output.save_every_n_epochs" => "save_every_n_epochs",
        "validation.split" | "validation.count" => "validation_split",
        "validation.dir" => "dataset",
        _ => return None,
    })
}

/// A trainer configuration error, named by the job parameter when there is one.
pub fn to_param_error(e: loraflow_trainer::Error) -> Error {
    match &e {
        loraflow_trainer::Error::InvalidConfig {
            field,
            value,
            reason,
        } => match param_of(field) {
            Some(param) => Error::param(param, format!("{value}: {reason}")),
            None => Error::Trainer(e),
        },
        _ => Error::Trainer(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> RunPaths {
        RunPaths {
            model: (PathBuf::from("model"), None),
            dataset: PathBuf::from("data"),
            captions: BTreeMap::new(),
            output: PathBuf::from("out"),
            name: "lora".into(),
            cache: None,
        }
    }

    fn params(pairs: &[(&str, ParamValue)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn catalogue_parameters_map_to_the_trainer() {
        let c = train_config(
            &params(&[
                ("epochs", ParamValue::Int(3)),
                ("resolution", ParamValue::Int(64)),
                ("network_dim", ParamValue::Int(8)),
                ("network_alpha", ParamValue::Float(0.0)),
                ("learning_rate", ParamValue::Float(1e-3)),
                ("text_encoder_lr", ParamValue::Float(0.0)),
                ("lr_scheduler", ParamValue::Str("cosine".into())),
                ("min_snr_gamma", ParamValue::Float(0.0)),
                ("trigger_word", ParamValue::Str(" ".into())),
                ("shuffle_tags", ParamValue::Bool(true)),
                ("keep_tokens", ParamValue::Int(1)),
                ("auto_adjust", ParamValue::Bool(true)),
            ]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.images.as_ref().unwrap().resolution, 64);
        assert_eq!((c.network.rank, c.network.alpha), (8, 8.0));
        assert_eq!(c.optimizer.learning_rate, 1e-3);
        assert!(c.text_encoder.is_none());
        assert_eq!(c.lr_schedule.kind, LrScheduleKind::Cosine);
        assert_eq!(c.objective.min_snr_gamma, None);
        assert_eq!(c.images.as_ref().unwrap().trigger_word, None);
        assert!(c.images.as_ref().unwrap().captions.shuffle_tags);
        assert_eq!(c.validation, None, "no split, no validation folder");

        let c = train_config(
            &params(&[("validation_split", ParamValue::Float(0.2))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert_eq!(c.validation, Some(ValidationConfig::split(0.2)));
        let err = train_config(
            &params(&[("validation_split", ParamValue::Float(1.0))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`validation_split`"), "{err}");
    }

    #[test]
    fn memory_parameters_reach_the_trainer() {
        let c = train_config(&params(&[]), None, paths(), "cpu").unwrap();
        assert_eq!(c.model.base_weights, BaseWeights::F32);
        let c = train_config(
            &params(&[("base_weights", ParamValue::Str("bf16".into()))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert_eq!(c.model.base_weights, BaseWeights::Bf16);
        assert!(!c.gradient_checkpointing, "off unless asked");
        let c = train_config(
            &params(&[("gradient_checkpointing", ParamValue::Bool(true))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert!(c.gradient_checkpointing);
        let err = train_config(
            &params(&[("base_weights", ParamValue::Str("fp16".into()))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`base_weights`") && err.contains("\"fp16\"") && err.contains("f32, bf16"),
            "{err}"
        );
    }

    #[test]
    fn unusable_values_name_the_parameter() {
        let err = train_config(
            &params(&[("optimizer", ParamValue::Str("prodigy".into()))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`optimizer`") && err.contains("prodigy"),
            "{err}"
        );
        let err = train_config(
            &params(&[("epochs", ParamValue::Int(0))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`epochs`"), "{err}");
        let err = train_config(
            &params(&[("caption_dropout", ParamValue::Float(2.0))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`caption_dropout`"), "{err}");
        let err = train_config(
            &params(&[(
                "lr_scheduler",
                ParamValue::Str("cosine_with_restarts".into()),
            )]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`lr_scheduler`"), "{err}");
    }

    #[test]
    fn a_model_outside_the_catalogue_is_flux_by_its_folder_or_config_folder() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/fixtures/flux");
        let folder = fixtures.join("pipeline");
        let file = fixtures.join("single_file/flux1-tiny-dev.safetensors");
        assert!(is_flux(None, &folder, None));
        // A BFL transformer file with the FLUX.1 folder of its other parts.
        assert!(is_flux(None, &file, Some(&folder)));
        assert!(!is_flux(None, &file, None));
        assert!(is_flux(Some(ModelFamily::Flux), &file, None));
        assert!(!is_flux(Some(ModelFamily::Sd15), &folder, None));
    }

    #[test]
    fn flux_jobs_train_the_flow_objective_and_refuse_sd_parameters() {
        let flux = Some(ModelFamily::Flux);
        let c = train_config(&params(&[]), flux, paths(), "cpu").unwrap();
        // sd-scripts' recommendation: flux_shift, guidance 1.0, no weighting.
        assert_eq!(c.objective.flow, Some(FlowObjective::default()));
        let targets: Vec<String> = FLUX_TARGETS.iter().map(|t| t.to_string()).collect();
        assert_eq!(c.network.targets, targets);
        let c = train_config(
            &params(&[
                ("timestep_sampling", ParamValue::Str("shift".into())),
                ("discrete_flow_shift", ParamValue::Float(3.1582)),
                ("sigmoid_scale", ParamValue::Float(1.5)),
                ("weighting_scheme", ParamValue::Str("cosmap".into())),
                ("guidance_scale", ParamValue::Float(3.5)),
            ]),
            flux,
            paths(),
            "cpu",
        )
        .unwrap();
        let flow = c.objective.flow.unwrap();
        assert_eq!(
            flow.timestep_sampling,
            TimestepSampling::Shift {
                sigmoid_scale: 1.5,
                shift: 3.1582
            }
        );
        assert_eq!(flow.weighting, LossWeighting::Cosmap);
        assert_eq!(flow.guidance, 3.5);
        for (name, value) in [
            ("min_snr_gamma", ParamValue::Float(5.0)),
            ("noise_offset", ParamValue::Float(0.05)),
            ("prediction_type", ParamValue::Str("v_prediction".into())),
            ("clip_skip", ParamValue::Int(2)),
            ("text_encoder_lr", ParamValue::Float(1e-4)),
        ] {
            let err = train_config(&params(&[(name, value)]), flux, paths(), "cpu")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{name}`")) && err.contains("FLUX.1"),
                "{err}"
            );
        }
        let err = train_config(
            &params(&[("guidance_scale", ParamValue::Float(500.0))]),
            flux,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`guidance_scale`"), "{err}");
        // The flow parameters belong to FLUX.1.
        let err = train_config(
            &params(&[("timestep_sampling", ParamValue::Str("shift".into()))]),
            Some(ModelFamily::Sd15),
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`timestep_sampling`"), "{err}");
    }

    #[test]
    fn conv_dim_adds_convolution_adapters() {
        let c = train_config(
            &params(&[("network_dim", ParamValue::Int(8))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert!(!c.network.targets.iter().any(|t| t.contains("conv")));
        assert_eq!((c.network.conv_rank, c.network.conv_alpha), (None, None));
        let c = train_config(
            &params(&[
                ("network_dim", ParamValue::Int(8)),
                ("conv_dim", ParamValue::Int(0)),
            ]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert_eq!(c.network.conv_rank, None, "0 means no convolution adapters");

        let c = train_config(
            &params(&[
                ("network_dim", ParamValue::Int(8)),
                ("conv_dim", ParamValue::Int(4)),
                ("conv_alpha", ParamValue::Float(0.0)),
            ]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        for pattern in CONV {
            assert!(c.network.targets.iter().any(|t| t == pattern), "{pattern}");
        }
        assert!(c.network.targets.iter().any(|t| t == "to_q"));
        assert_eq!(
            c.network.rank_alpha(true),
            (4, 4.0),
            "an alpha of 0 is the rank"
        );
        assert_eq!(c.network.rank_alpha(false), (8, 8.0));
        let c = train_config(
            &params(&[
                ("conv_dim", ParamValue::Int(4)),
                ("conv_alpha", ParamValue::Float(1.0)),
            ]),
            None,
            paths(),
            "cpu",
        )
        .unwrap();
        assert_eq!(c.network.rank_alpha(true), (4, 1.0));
        let err = train_config(
            &params(&[("conv_dim", ParamValue::Int(-1))]),
            None,
            paths(),
            "cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`conv_dim`"), "{err}");
    }
}
