//! Three-step jobs for scheduler tests: steps `s1 → s2 → s3` of the custom
//! kind `noop`, then the review gate and publish. The `noop` executor does
//! no work; its `s3` reports one LoRA epoch (a record only: the bytes are
//! never read), so the job reaches review.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use loraflow::core::artifact::{Artifact, ArtifactKind, EpochOutput, Sha256};
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::job::{JobSpec, StepError, StepErrorKind};
use loraflow::core::workflow::{RetryPolicy, StepKind, StepSpec, Timeouts, WorkflowSpec};

pub const NOOP: &str = "noop";

/// The `noop` executor. `hold` makes every step take that long (cancelled
/// when the server says so); `runs` counts the steps it started.
#[derive(Debug, Default, Clone)]
pub struct Noop {
    pub hold: Duration,
    pub runs: Arc<AtomicU32>,
}

impl Noop {
    pub fn holding(hold: Duration) -> Self {
        Self {
            hold,
            ..Self::default()
        }
    }
}

#[async_trait]
impl Executor for Noop {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::new(NOOP)]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if !self.hold.is_zero() {
            tokio::select! {
                _ = ctx.cancelled() => return Err(StepError {
                    kind: StepErrorKind::Cancelled,
                    message: "cancelled".into(),
                    retryable: true,
                }),
                _ = tokio::time::sleep(self.hold) => {}
            }
        }
        let epochs = if step.step_id.as_str() == "s3" {
            vec![EpochOutput {
                epoch: 1,
                lora: Some(Artifact {
                    kind: ArtifactKind::Lora,
                    name: "noop-e1.safetensors".into(),
                    uri: format!("file:///noop/{}/e1.safetensors", step.job_id),
                    sha256: Sha256::of(step.job_id.as_str().as_bytes()),
                    size_bytes: 1,
                    epoch: Some(1),
                }),
                samples: vec![],
                loss: Some(0.1),
                ..Default::default()
            }]
        } else {
            vec![]
        };
        Ok(StepOutput {
            epochs,
            ..Default::default()
        })
    }
}

/// `s1 → s2 → s3 → review → publish`, the `noop` steps with this heartbeat
/// timeout and retry policy.
pub fn three_steps(heartbeat: Duration, retry: RetryPolicy) -> WorkflowSpec {
    let noop = |id: &str, deps: &[&str]| StepSpec {
        timeouts: Timeouts {
            heartbeat,
            ..Timeouts::default()
        },
        retry: retry.clone(),
        ..StepSpec::new(id, NOOP).after(deps)
    };
    WorkflowSpec {
        steps: vec![
            noop("s1", &[]),
            noop("s2", &["s1"]),
            noop("s3", &["s2"]),
            StepSpec::new("review", StepKind::REVIEW).after(&["s3"]),
            StepSpec::new("publish", StepKind::PUBLISH).after(&["review"]),
        ],
    }
}

/// Retries after 50–150 ms, up to `max_attempts`.
pub fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        backoff_multiplier: 1.0,
        max_backoff: Duration::from_millis(100),
        jitter: 0.5,
    }
}

/// A job spec on `dataset_uri` running `workflow` (such as [`three_steps`]).
pub fn spec_with(dataset_uri: &str, workflow: WorkflowSpec) -> JobSpec {
    JobSpec {
        workflow: Some(workflow),
        ..super::spec(dataset_uri)
    }
}
