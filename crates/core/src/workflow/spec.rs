//! What a workflow is made of, as a user or the template writes it.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalogue::Engine;
use crate::ids::StepId;

/// The kind of a step: which executor runs it. Built-in kinds have constants;
/// any other name is a custom kind that some registered executor must handle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct StepKind(pub String);

impl StepKind {
    pub const VALIDATE_DATASET: &'static str = "validate_dataset";
    pub const LABEL: &'static str = "label";
    pub const TRAIN: &'static str = "train";
    pub const SAMPLE: &'static str = "sample";
    /// The human review gate. It is never leased to an executor: it is
    /// completed by approving (or rejecting) the job.
    pub const REVIEW: &'static str = "review";
    pub const PUBLISH: &'static str = "publish";

    /// The kinds loraflow ships executors (or, for `review`, a gate) for.
    pub const BUILTIN: [&'static str; 6] = [
        Self::VALIDATE_DATASET,
        Self::LABEL,
        Self::TRAIN,
        Self::SAMPLE,
        Self::REVIEW,
        Self::PUBLISH,
    ];

    pub fn new(kind: impl Into<String>) -> Self {
        Self(kind.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is(&self, kind: &str) -> bool {
        self.0 == kind
    }

    /// True for the review gate, which no executor runs.
    pub fn is_gate(&self) -> bool {
        self.is(Self::REVIEW)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StepKind {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// What an executor must offer to be given a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Needs a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Needs this training engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Needs at least this much GPU memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vram_gb: Option<u32>,
    /// Free-form capability labels the executor must carry (`region=eu`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub labels: BTreeSet<String>,
}

/// How long a step may take, in the spirit of Temporal's activity timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// From queued to leased; `None` waits for an executor forever.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, example = "30m"))]
    pub schedule_to_start: Option<Duration>,
    /// From leased to completed, per attempt.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "utoipa", schema(value_type = String, example = "10m"))]
    pub start_to_close: Duration,
    /// Longest silence between heartbeats before the lease expires.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "utoipa", schema(value_type = String, example = "10m"))]
    pub heartbeat: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            schedule_to_start: None,
            start_to_close: Duration::from_secs(6 * 3600),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// How a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retry.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "utoipa", schema(value_type = String, example = "10m"))]
    pub initial_backoff: Duration,
    pub backoff_multiplier: f64,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "utoipa", schema(value_type = String, example = "10m"))]
    pub max_backoff: Duration,
    /// Fraction of the backoff added or removed at random (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            max_backoff: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry).
    ///
    /// The jitter is drawn from `seed` (a hash of job, step and attempt), not
    /// from a random generator, so that the decision is a pure function of the
    /// event history and replays the same.
    pub fn backoff(&self, next_attempt: u32, seed: u64) -> Duration {
        let retries = next_attempt.saturating_sub(2) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(retries);
        let base = base.min(self.max_backoff.as_secs_f64());
        // Map the seed to [-1, 1).
        let unit = (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let jittered = (base * (1.0 + self.jitter * unit))
            .clamp(0.0, self.max_backoff.as_secs_f64() * (1.0 + self.jitter));
        // Whole milliseconds: the backoff is recorded in events as milliseconds.
        Duration::from_millis((jittered * 1000.0).round() as u64)
    }
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub id: StepId,
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<StepId>,
    #[serde(default)]
    pub requires: Requirements,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Step-specific settings, passed to the executor as they are.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
}

impl StepSpec {
    /// A step with default requirements, timeouts and retry policy.
    pub fn new(id: impl Into<StepId>, kind: impl Into<StepKind>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            depends_on: Vec::new(),
            requires: Requirements::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            params: serde_json::Value::Null,
        }
    }

    pub fn after(mut self, deps: &[&str]) -> Self {
        self.depends_on = deps.iter().map(|d| StepId::new(*d)).collect();
        self
    }
}

/// A workflow: steps and their dependencies. Validate it with
/// [`WorkflowSpec::validate`] before use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub steps: Vec<StepSpec>,
}

impl WorkflowSpec {
    pub fn step(&self, id: &StepId) -> Option<&StepSpec> {
        self.steps.iter().find(|s| &s.id == id)
    }
}
