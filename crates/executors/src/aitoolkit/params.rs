//! A job's parameters, checked into the form ai-toolkit's job config needs.
//! The catalogue has already resolved and bounded them. What ai-toolkit runs
//! (its optimisers and schedulers, as `toolkit/optimizer.py` and
//! `toolkit/scheduler.py` at ostris/ai-toolkit@27a03a91f23eb1b757d5ec2e80ee3e129cfcc350
//! read them) is in the tables below, which this mapping reads and [`rules`]
//! hands to the catalogue, so the schema offers for `ai-toolkit` exactly
//! these and other values are refused at submit.

use loraflow_core::catalogue::{Engine, EngineRules, Params};

use super::error::{Error, Result};
use crate::external::params::Reader;

/// The optimisers the catalogue offers, by ai-toolkit's names
/// (`get_optimizer` lower-cases the name and matches `adamw`, `adamw8bit`,
/// and anything starting with `prodigy`).
pub const OPTIMIZERS: [(&str, &str); 3] = [
    ("adamw", "adamw"),
    ("adamw8bit", "adamw8bit"),
    ("prodigy", "prodigy"),
];

/// ai-toolkit's schedulers (`get_lr_scheduler`) among the catalogue's.
/// `linear` is torch's `LinearLR`, which the config sets to decay from the
/// learning rate to 0 over the run. Left out: `polynomial` (ai-toolkit
/// hands its `total_iters` to diffusers' polynomial schedule, which does
/// not take it) and `constant_with_warmup` (warm-up steps are not offered
/// for this engine: ai-toolkit warms up with no other scheduler).
pub const LR_SCHEDULERS: [&str; 4] = ["constant", "cosine", "cosine_with_restarts", "linear"];

/// What the model predicts. ai-toolkit's `model.is_v_pred`; FLUX.1 trains by
/// flow matching and takes none (the catalogue disables it for flux).
pub const PREDICTION_TYPES: [(&str, Option<bool>); 3] = [
    ("auto", None),
    ("epsilon", Some(false)),
    ("v_prediction", Some(true)),
];

/// What the ai-toolkit engine runs, for the catalogue (see
/// [`loraflow_core::catalogue::engine_rules`]). ai-toolkit buckets any
/// resolution, so no step is imposed on it.
pub fn rules() -> EngineRules {
    EngineRules::new(Engine::AiToolkit)
        .choices("optimizer", OPTIMIZERS.map(|(name, _)| name))
        .choices("lr_scheduler", LR_SCHEDULERS)
        .choices("prediction_type", PREDICTION_TYPES.map(|(name, _)| name))
}

/// The job parameters the ai-toolkit engine uses. `None`: the job does not
/// set it (the parameter is disabled for this model or engine), so
/// ai-toolkit's own default applies and the key is left out.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    pub epochs: u32,
    pub num_repeats: u32,
    pub batch_size: Option<u32>,
    pub resolution: Option<u32>,
    pub learning_rate: Option<f64>,
    pub lr_scheduler: Option<&'static str>,
    /// ai-toolkit's optimiser name.
    pub optimizer: Option<&'static str>,
    pub network_dim: Option<u32>,
    pub network_alpha: Option<f64>,
    pub min_snr_gamma: Option<f64>,
    pub noise_offset: Option<f64>,
    /// `Some(true)`: v-prediction.
    pub v_prediction: Option<bool>,
    pub shuffle_tags: Option<bool>,
    pub keep_tokens: Option<u32>,
    pub caption_dropout: Option<f64>,
    pub save_every_n_epochs: Option<u32>,
    pub max_grad_norm: Option<f64>,
    pub gradient_accumulation: Option<u32>,
    pub seed: Option<u64>,
    pub trigger_word: Option<String>,
}

impl TrainParams {
    /// Check a job's resolved parameters. `epochs` and `num_repeats` are
    /// required: the step count is planned from them.
    pub fn from_params(params: &Params) -> Result<Self> {
        let r = Reader(params);
        let required = |name: &'static str| -> Result<u32> {
            r.positive(name)?.ok_or_else(|| {
                Error::param(
                    name,
                    "is missing; the ai-toolkit engine needs it to plan the run",
                )
            })
        };
        let lr_scheduler = match r.string("lr_scheduler")? {
            None => None,
            Some(s) => Some(*LR_SCHEDULERS.iter().find(|n| **n == s).ok_or_else(|| {
                Error::param(
                    "lr_scheduler",
                    format!(
                        "{s:?} is not an ai-toolkit scheduler; use one of {}",
                        LR_SCHEDULERS.join(", ")
                    ),
                )
            })?),
        };
        Ok(Self {
            epochs: required("epochs")?,
            num_repeats: required("num_repeats")?,
            batch_size: r.positive("batch_size")?,
            resolution: r.positive("resolution")?,
            learning_rate: r.float("learning_rate")?,
            lr_scheduler,
            optimizer: r.choice("optimizer", &OPTIMIZERS, false, "an ai-toolkit optimiser")?,
            network_dim: r.positive("network_dim")?,
            network_alpha: r.float("network_alpha")?,
            min_snr_gamma: r.float("min_snr_gamma")?,
            noise_offset: r.float("noise_offset")?,
            v_prediction: r
                .choice(
                    "prediction_type",
                    &PREDICTION_TYPES,
                    true,
                    "a prediction type",
                )?
                .flatten(),
            shuffle_tags: r.bool("shuffle_tags")?,
            keep_tokens: r.u32("keep_tokens")?,
            caption_dropout: r.probability("caption_dropout")?,
            save_every_n_epochs: r.positive("save_every_n_epochs")?,
            max_grad_norm: r.float("max_grad_norm")?,
            gradient_accumulation: r.positive("gradient_accumulation")?,
            seed: r.uint("seed")?,
            trigger_word: r.trigger_word()?,
        })
    }
}

/// How epochs become ai-toolkit's steps. ai-toolkit counts optimiser steps
/// (`train.steps`) and saves by step (`save.save_every`); it has no epochs.
/// One epoch here is every image seen `num_repeats` times:
/// `ceil(images × num_repeats / batch_size)` batches, and with
/// `gradient_accumulation` (ai-toolkit draws that many batches for each
/// step) `ceil(batches / gradient_accumulation)` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    pub epochs: u32,
    pub steps_per_epoch: u64,
    /// `epochs × steps_per_epoch`.
    pub steps: u64,
    /// Steps between saves (and samples): `save_every_n_epochs` epochs.
    pub save_every: u64,
}

impl StepPlan {
    pub fn new(params: &TrainParams, images: usize) -> Self {
        let seen = images as u64 * u64::from(params.num_repeats);
        let batches = seen.div_ceil(u64::from(params.batch_size.unwrap_or(1)));
        let steps_per_epoch = batches
            .div_ceil(u64::from(params.gradient_accumulation.unwrap_or(1)))
            .max(1);
        Self {
            epochs: params.epochs,
            steps_per_epoch,
            steps: steps_per_epoch * u64::from(params.epochs),
            save_every: steps_per_epoch * u64::from(params.save_every_n_epochs.unwrap_or(1)),
        }
    }

    /// The epoch a saved step ends, if it ends one: ai-toolkit names the
    /// save after step `n` `<name>_<n:09>`.
    pub fn epoch_of_save(&self, step: u64) -> Option<u32> {
        (step > 0 && step.is_multiple_of(self.steps_per_epoch))
            .then(|| u32::try_from(step / self.steps_per_epoch).ok())
            .flatten()
            .filter(|e| *e <= self.epochs)
    }

    /// The epoch step `n` (1-based, as the progress bar counts) lies in.
    pub fn epoch_of_step(&self, step: u64) -> u32 {
        let e = step.max(1).div_ceil(self.steps_per_epoch);
        u32::try_from(e).unwrap_or(u32::MAX).min(self.epochs)
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
    fn values_ai_toolkit_would_refuse_are_named() {
        let base = [
            ("epochs", ParamValue::Int(2)),
            ("num_repeats", ParamValue::Int(2)),
        ];
        for (name, value, expected) in [
            (
                "optimizer",
                ParamValue::Str("lion".into()),
                "use one of adamw",
            ),
            (
                "lr_scheduler",
                ParamValue::Str("polynomial".into()),
                "not an ai-toolkit scheduler",
            ),
            ("batch_size", ParamValue::Int(0), "must be at least 1"),
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
        let err = TrainParams::from_params(&params(&base[1..])).unwrap_err();
        assert!(
            err.to_string().contains("parameter epochs is missing"),
            "{err}"
        );
    }

    #[test]
    fn epochs_become_steps_as_ai_toolkit_counts_them() {
        let mut p = TrainParams::from_params(&params(&[
            ("epochs", ParamValue::Int(3)),
            ("num_repeats", ParamValue::Int(10)),
            ("batch_size", ParamValue::Int(2)),
            ("save_every_n_epochs", ParamValue::Int(1)),
        ]))
        .unwrap();
        // 3 images × 10 repeats = 30 images, 15 batches of 2.
        let plan = StepPlan::new(&p, 3);
        assert_eq!(
            (plan.steps_per_epoch, plan.steps, plan.save_every),
            (15, 45, 15)
        );
        assert_eq!(plan.epoch_of_save(15), Some(1));
        assert_eq!(plan.epoch_of_save(45), Some(3));
        assert_eq!(plan.epoch_of_save(20), None);
        assert_eq!(plan.epoch_of_save(0), None);
        assert_eq!((plan.epoch_of_step(1), plan.epoch_of_step(15)), (1, 1));
        assert_eq!((plan.epoch_of_step(16), plan.epoch_of_step(45)), (2, 3));
        // 31 images: a last, smaller batch; accumulation of 4 batches a step.
        p.gradient_accumulation = Some(4);
        p.save_every_n_epochs = Some(2);
        p.num_repeats = 1;
        let plan = StepPlan::new(&p, 31);
        assert_eq!(
            (plan.steps_per_epoch, plan.steps, plan.save_every),
            (4, 12, 8)
        );
    }
}
