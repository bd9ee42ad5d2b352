//! The standard LoRA pipeline:
//! validate_dataset → label → train → sample → review (gate) → publish.

use std::time::Duration;

use super::spec::{Requirements, RetryPolicy, StepKind, StepSpec, Timeouts, WorkflowSpec};
use crate::catalogue::{BaseModel, Engine};

/// The standard workflow for training `model` with `engine`. Training and
/// sampling need a GPU with the model's minimum memory, unless the model
/// trains on CPU (`min_vram_gb = 0`).
pub fn standard_lora(model: &BaseModel, engine: Engine) -> WorkflowSpec {
    let gpu = model.min_vram_gb > 0;
    let gpu_req = Requirements {
        gpu,
        engine: None,
        min_vram_gb: gpu.then_some(model.min_vram_gb),
        labels: Default::default(),
    };
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let quick = Timeouts {
        schedule_to_start: None,
        start_to_close: minutes(30),
        heartbeat: minutes(2),
    };
    let long = Timeouts {
        schedule_to_start: None,
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
