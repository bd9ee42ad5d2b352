//! A job's sample settings ([`loraflow_core::sampling`]) as the native engine renders them:
//! the samplers it runs, the operator's defaults for jobs created before the settings were job
//! parameters, default prompts from the job's captions, and the trainer's [`SampleConfig`].

use loraflow_core::executor::StepAssignment;
use loraflow_core::limits::TRIGGER_WORD_PARAM;
use loraflow_core::sampling::{SampleOverrides, SampleSettings};
use loraflow_trainer::sample::scheduler::SamplerKind;
use loraflow_trainer::train::config::SampleConfig;

use super::error::{Error, Result};
use super::options::SampleDefaults;

/// The samplers the native engine runs, by catalogue name.
pub const SAMPLERS: [(&str, SamplerKind); 2] =
    [("ddim", SamplerKind::Ddim), ("euler", SamplerKind::Euler)];

/// The sampler named `name`, or the parameter error naming those the engine runs.
pub fn sampler_kind(name: &str) -> Result<SamplerKind> {
    SAMPLERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            Error::param(
                loraflow_core::sampling::SAMPLER,
                format!(
                    "{name:?} is not a sampler of the native engine; it runs {}",
                    SAMPLERS.map(|(n, _)| n).join(", ")
                ),
            )
        })
}

/// The catalogue name of `kind`.
fn sampler_name(kind: SamplerKind) -> &'static str {
    SAMPLERS
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("ddim", |(n, _)| *n)
}

/// The operator's defaults as settings; a size of 0 stands for the model's own.
pub fn fallback(d: &SampleDefaults) -> SampleSettings {
    let size = d.size.unwrap_or(0) as u32;
    SampleSettings {
        prompts: Vec::new(),
        negative_prompt: d.negative_prompt.clone(),
        sampler: sampler_name(d.sampler).to_owned(),
        steps: d.steps as u32,
        guidance_scale: d.guidance_scale,
        width: size,
        height: size,
        seed: d.seed,
        lora_strength: d.lora_strength,
    }
}

/// The job's sample settings, with default prompts from its trigger word and `captions` when
/// it gave none.
pub fn job_settings<'a>(
    step: &StepAssignment,
    defaults: &SampleDefaults,
    captions: impl IntoIterator<Item = &'a str>,
) -> SampleSettings {
    let trigger = step
        .params
        .get(TRIGGER_WORD_PARAM)
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    SampleSettings::of(&step.params, &step.sample_prompts, &fallback(defaults))
        .or_default_prompts(trigger, captions)
}

/// `settings` as the trainer renders them during training (the current adapters, at full
/// strength); a size of 0 leaves the trainer's own (the training resolution).
pub fn trainer_config(settings: &SampleSettings) -> Result<SampleConfig> {
    let size = |v: u32| (v > 0).then_some(v as usize);
    Ok(SampleConfig {
        prompts: settings.prompts.clone(),
        negative_prompt: settings.negative_prompt.clone(),
        steps: settings.steps as usize,
        guidance_scale: settings.guidance_scale,
        sampler: sampler_kind(&settings.sampler)?,
        seed: settings.seed,
        size: size(settings.width),
        height: size(settings.height).filter(|h| Some(*h) != size(settings.width)),
        every_n_epochs: None,
    })
}

/// A `sample-now` request's settings over the job's, for the trainer.
pub fn requested_config(job: &SampleSettings, asked: &SampleOverrides) -> Result<SampleConfig> {
    trainer_config(&job.clone().with(asked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_the_trainer_and_unknown_samplers_are_refused() {
        let s = SampleSettings {
            prompts: vec!["a".into()],
            sampler: "euler".into(),
            width: 64,
            height: 32,
            ..SampleSettings::default()
        };
        let c = trainer_config(&s).unwrap();
        assert_eq!((c.size, c.height), (Some(64), Some(32)));
        assert_eq!(c.sampler, SamplerKind::Euler);
        let square = trainer_config(&SampleSettings {
            height: 64,
            ..s.clone()
        })
        .unwrap();
        assert_eq!((square.size, square.height), (Some(64), None));
        let err = sampler_kind("euler_a").unwrap_err().to_string();
        assert!(err.contains("ddim, euler"), "{err}");
        let asked = requested_config(
            &s,
            &SampleOverrides {
                steps: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(asked.steps, 3);
    }
}
