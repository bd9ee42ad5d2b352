//! A job's parameters, checked into the form sd-scripts needs. The catalogue
//! has already resolved and bounded them. What the kohya engine runs (its
//! optimisers, schedulers and prediction types) is in the tables below, which
//! this mapping reads and [`rules`] hands to the catalogue, so the schema
//! offers for `kohya` exactly these and other values are refused at submit;
//! the checks here still refuse what sd-scripts would, for a job created
//! before a catalogue change, before a GPU is touched.

use loraflow_core::catalogue::{Engine, EngineRules, Params};

use super::error::{Error, Result};
use crate::external::params::Reader;

/// The optimisers the catalogue offers, by their sd-scripts names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    AdamW,
    AdamW8bit,
    Prodigy,
}

impl Optimizer {
    /// sd-scripts' `--optimizer_type` value. train_util.get_optimizer
    /// lower-cases it and matches `"AdamW8bit".lower()`, `"Prodigy".lower()`,
    /// and falls back to AdamW.
    pub fn kohya_name(self) -> &'static str {
        match self {
            Self::AdamW => "AdamW",
            Self::AdamW8bit => "AdamW8bit",
            Self::Prodigy => "Prodigy",
        }
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// The optimisers the kohya engine runs, by catalogue name (matched without
/// regard to case).
pub const OPTIMIZERS: [(&str, Optimizer); 3] = [
    ("adamw", Optimizer::AdamW),
    ("adamw8bit", Optimizer::AdamW8bit),
    ("prodigy", Optimizer::Prodigy),
];

/// sd-scripts' `--lr_scheduler` choices (train_util.add_optimizer_arguments:
/// "linear, cosine, cosine_with_restarts, polynomial, constant (default),
/// constant_with_warmup, adafactor") less `adafactor`, which sd-scripts
/// allows only with the Adafactor optimiser, not one of [`OPTIMIZERS`].
pub const LR_SCHEDULERS: [&str; 6] = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
];

/// What the model is trained to predict; `auto` is the family's usual target.
pub const PREDICTION_TYPES: [(&str, Option<Prediction>); 3] = [
    ("auto", None),
    ("epsilon", Some(Prediction::Epsilon)),
    ("v_prediction", Some(Prediction::VPrediction)),
];

/// What the kohya engine runs, for the catalogue (see
/// [`loraflow_core::catalogue::engine_rules`]). sd-scripts buckets any
/// resolution in the catalogue's range, so no step is imposed on it.
pub fn rules() -> EngineRules {
    EngineRules::new(Engine::Kohya)
        .choices(
            loraflow_core::sampling::SAMPLER,
            SAMPLERS.map(|(name, _)| name),
        )
        .choices("optimizer", OPTIMIZERS.map(|(name, _)| name))
        .choices("lr_scheduler", LR_SCHEDULERS)
        .choices("prediction_type", PREDICTION_TYPES.map(|(name, _)| name))
}

/// The job parameters the kohya engine uses. `None` means the job does not
/// set it (the parameter is disabled for this model), so sd-scripts' own
/// default applies and the key is left out of the generated config.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    pub epochs: u32,
    pub num_repeats: u32,
    pub batch_size: Option<u32>,
    pub resolution: Option<u32>,
    pub learning_rate: Option<f64>,
    pub unet_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    pub lr_scheduler: Option<String>,
    pub lr_warmup_steps: Option<u32>,
    pub optimizer: Option<Optimizer>,
    pub network_dim: Option<u32>,
    pub network_alpha: Option<f64>,
    /// sd-scripts' LoCon rank (`network_args = ["conv_dim=…"]`); 0 or absent: none.
    pub conv_dim: Option<u32>,
    /// The LoCon alpha; 0 or absent: `conv_dim`.
    pub conv_alpha: Option<f64>,
    pub min_snr_gamma: Option<f64>,
    pub noise_offset: Option<f64>,
    pub clip_skip: Option<u32>,
    pub prediction: Option<Prediction>,
    pub shuffle_tags: Option<bool>,
    pub keep_tokens: Option<u32>,
    pub caption_dropout: Option<f64>,
    pub save_every_n_epochs: Option<u32>,
    pub max_grad_norm: Option<f64>,
    /// Fraction of the images sd-scripts holds out for its validation loss.
    pub validation_split: Option<f64>,
    pub gradient_accumulation: Option<u32>,
    pub seed: Option<u64>,
    pub trigger_word: Option<String>,
    /// sd-scripts' `sample_sampler` name.
    pub sample_sampler: Option<&'static str>,
}

/// The samplers sd-scripts renders samples with, by catalogue name, with sd-scripts' names
/// (`--sample_sampler`).
pub const SAMPLERS: [(&str, &str); 4] = [
    ("ddim", "ddim"),
    ("euler", "euler"),
    ("euler_a", "euler_a"),
    ("dpmpp_2m", "dpmsolver++"),
];

impl TrainParams {
    /// Check a job's resolved parameters. `epochs` and `num_repeats` are
    /// required: the layout and the expected outputs depend on them.
    pub fn from_params(params: &Params) -> Result<Self> {
        let r = Reader(params);
        let required = |name: &'static str| -> Result<u32> {
            r.positive(name)?.ok_or_else(|| {
                Error::param(
                    name,
                    "is missing; the kohya engine needs it to plan the run",
                )
            })
        };
        let optimizer = match r.string("optimizer")? {
            None => None,
            Some(s) => Some(
                OPTIMIZERS
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(s))
                    .map(|(_, o)| *o)
                    .ok_or_else(|| {
                        Error::param(
                            "optimizer",
                            format!(
                                "{s:?} is not one the kohya engine runs; use {}",
                                OPTIMIZERS.map(|(n, _)| n).join(", ")
                            ),
                        )
                    })?,
            ),
        };
        let lr_scheduler = match r.string("lr_scheduler")? {
            Some(s) if !LR_SCHEDULERS.contains(&s) => {
                return Err(Error::param(
                    "lr_scheduler",
                    format!(
                        "{s:?} is not an sd-scripts scheduler; use one of {}",
                        LR_SCHEDULERS.join(", ")
                    ),
                ));
            }
            s => s.map(str::to_owned),
        };
        let prediction = match r.string("prediction_type")? {
            None => None,
            Some(s) => PREDICTION_TYPES
                .iter()
                .find(|(name, _)| *name == s)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    Error::param(
                        "prediction_type",
                        format!(
                            "{s:?} is not one of {}",
                            PREDICTION_TYPES.map(|(n, _)| n).join(", ")
                        ),
                    )
                })?,
        };
        let sample_sampler = match r.string(loraflow_core::sampling::SAMPLER)? {
            None => None,
            Some(s) => Some(
                SAMPLERS
                    .iter()
                    .find(|(name, _)| *name == s)
                    .map(|(_, k)| *k)
                    .ok_or_else(|| {
                        Error::param(
                            loraflow_core::sampling::SAMPLER,
                            format!(
                                "{s:?} is not a sampler of the kohya engine; use one of {}",
                                SAMPLERS.map(|(n, _)| n).join(", ")
                            ),
                        )
                    })?,
            ),
        };
        let caption_dropout = r.float("caption_dropout")?;
        if let Some(p) = caption_dropout.filter(|p| *p > 1.0) {
            return Err(Error::param(
                "caption_dropout",
                format!("{p} is a probability and must be at most 1"),
            ));
        }
        Ok(Self {
            epochs: required("epochs")?,
            num_repeats: required("num_repeats")?,
            batch_size: r.positive("batch_size")?,
            resolution: r.positive("resolution")?,
            learning_rate: r.float("learning_rate")?,
            unet_lr: r.float("unet_lr")?,
            text_encoder_lr: r.float("text_encoder_lr")?,
            lr_scheduler,
            lr_warmup_steps: r.u32("lr_warmup_steps")?,
            optimizer,
            network_dim: r.positive("network_dim")?,
            network_alpha: r.float("network_alpha")?,
            conv_dim: r.u32("conv_dim")?,
            conv_alpha: r.float("conv_alpha")?,
            min_snr_gamma: r.float("min_snr_gamma")?,
            noise_offset: r.float("noise_offset")?,
            clip_skip: r.positive("clip_skip")?,
            prediction,
            shuffle_tags: r.bool("shuffle_tags")?,
            keep_tokens: r.u32("keep_tokens")?,
            caption_dropout,
            save_every_n_epochs: r.positive("save_every_n_epochs")?,
            max_grad_norm: r.float("max_grad_norm")?,
            validation_split: r.float("validation_split")?,
            gradient_accumulation: r.positive("gradient_accumulation")?,
            seed: r.uint("seed")?,
            trigger_word: r
                .string("trigger_word")?
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            sample_sampler,
        })
    }

    /// Images per optimiser step, for samples-per-second figures.
    pub fn samples_per_step(&self) -> u32 {
        self.batch_size.unwrap_or(1) * self.gradient_accumulation.unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::catalogue::ParamValue;

    fn params(pairs: &[(&str, ParamValue)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn epochs_and_repeats_are_required() {
        let err =
            TrainParams::from_params(&params(&[("num_repeats", ParamValue::Int(2))])).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidParam { name, .. } if name == "epochs"),
            "{err}"
        );
    }

    #[test]
    fn values_sd_scripts_would_refuse_are_named() {
        let base = [
            ("epochs", ParamValue::Int(2)),
            ("num_repeats", ParamValue::Int(2)),
        ];
        for (name, value, expected) in [
            (
                "optimizer",
                ParamValue::Str("lion".into()),
                "use adamw, adamw8bit, prodigy",
            ),
            (
                "lr_scheduler",
                ParamValue::Str("warmup".into()),
                "not an sd-scripts scheduler",
            ),
            ("batch_size", ParamValue::Int(0), "must be at least 1"),
            ("seed", ParamValue::Float(1.5), "whole number"),
            ("caption_dropout", ParamValue::Float(1.5), "at most 1"),
        ] {
            let mut p = params(&base);
            p.insert(name.to_owned(), value);
            let err = TrainParams::from_params(&p).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("parameter {name} ")),
                "{err}"
            );
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn an_int_is_accepted_for_a_float_and_a_blank_trigger_is_none() {
        let p = TrainParams::from_params(&params(&[
            ("epochs", ParamValue::Int(2)),
            ("num_repeats", ParamValue::Int(3)),
            ("network_alpha", ParamValue::Int(8)),
            ("trigger_word", ParamValue::Str("  ".into())),
            ("optimizer", ParamValue::Str("AdamW8bit".into())),
        ]))
        .unwrap();
        assert_eq!(p.network_alpha, Some(8.0));
        assert_eq!(p.trigger_word, None);
        assert_eq!(p.optimizer, Some(Optimizer::AdamW8bit));
    }
}
