//! The standard LoRA pipeline:
//! validate_dataset → label → train → sample → review (gate) → publish.

use std::time::Duration;

use super::spec::{Requirements, RetryPolicy, StepKind, StepSpec, Timeouts, WorkflowSpec};
use crate::catalogue::{BaseModel, Engine};

/// What a deployment sets in the standard template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateOptions {
    /// How long each executor step of the template waits in the queue for
    /// an executor before its job fails (naming what no connected executor
    /// offers); `None` waits forever. The review gate never times out.
    pub schedule_to_start: Option<Duration>,
}

impl TemplateOptions {
    /// The default schedule-to-start timeout: 30 minutes.
    pub const DEFAULT_SCHEDULE_TO_START: Duration = Duration::from_secs(30 * 60);
}

impl Default for TemplateOptions {
    fn default() -> Self {
        Self {
            schedule_to_start: Some(Self::DEFAULT_SCHEDULE_TO_START),
        }
    }
}

/// The standard workflow for training `model` with `engine`, with the
/// default [`TemplateOptions`].
pub fn standard_lora(model: &BaseModel, engine: Engine) -> WorkflowSpec {
    standard_lora_with(model, engine, &TemplateOptions::default())
}

/// The standard workflow for training `model` with `engine`. Training and
/// sampling need a GPU with the model's minimum memory, unless the model
/// trains on CPU (`min_vram_gb = 0`).
pub fn standard_lora_with(
    model: &BaseModel,
    engine: Engine,
    options: &TemplateOptions,
) -> WorkflowSpec {
    let gpu = model.min_vram_gb > 0;
    let gpu_req = Requirements {
        gpu,
        engine: None,
        min_vram_gb: gpu.then_some(model.min_vram_gb),
        labels: Default::default(),
    };
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let quick = Timeouts {
        schedule_to_start: options.schedule_to_start,
        start_to_close: minutes(30),
        heartbeat: minutes(2),
    };
    let long = Timeouts {
        schedule_to_start: options.schedule_to_start,
        start_to_close: minutes(12 * 60),
        heartbeat: minutes(5),
    };
    let step = |id: &str, kind: &str, deps: &[&str], requires: Requirements, timeouts: Timeouts| {
        StepSpec {
            requires,
            timeouts,
            ..StepSpec::new(id, kind).after(deps)
        }
    };
    WorkflowSpec {
        steps: vec![
            step(
                "validate",
                StepKind::VALIDATE_DATASET,
                &[],
                Requirements::default(),
                quick,
            ),
            step(
                "label",
                StepKind::LABEL,
                &["validate"],
                Requirements::default(),
                quick,
            ),
            step(
                "train",
                StepKind::TRAIN,
                &["label"],
                Requirements {
                    engine: Some(engine),
                    ..gpu_req.clone()
                },
                long,
            ),
            step("sample", StepKind::SAMPLE, &["train"], gpu_req, long),
            StepSpec {
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..StepSpec::new("review", StepKind::REVIEW).after(&["sample"])
            },
            step(
                "publish",
                StepKind::PUBLISH,
                &["review"],
                Requirements::default(),
                quick,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;

    #[test]
    fn every_executor_step_gets_the_schedule_to_start_timeout_and_the_review_gate_none() {
        let c = Catalogue::builtin();
        let sd15 = c.base_model(&"sd15".into()).unwrap();
        let default = standard_lora(sd15, Engine::Kohya);
        for s in &default.steps {
            let expected = (!s.kind.is_gate()).then_some(Duration::from_secs(30 * 60));
            assert_eq!(s.timeouts.schedule_to_start, expected, "{}", s.id);
        }
        let hour = TemplateOptions {
            schedule_to_start: Some(Duration::from_secs(3600)),
        };
        let train = standard_lora_with(sd15, Engine::Kohya, &hour);
        assert_eq!(
            train
                .step(&"train".into())
                .unwrap()
                .timeouts
                .schedule_to_start,
            Some(Duration::from_secs(3600))
        );
        let never = TemplateOptions {
            schedule_to_start: None,
        };
        let spec = standard_lora_with(sd15, Engine::Kohya, &never);
        assert!(
            spec.steps
                .iter()
                .all(|s| s.timeouts.schedule_to_start.is_none())
        );
    }
}
