//! Workflows: `WorkflowSpec`, `StepSpec`, `Requirements`, `Timeouts`, `RetryPolicy`.
//!
//! Absent messages take the domain's defaults (`Timeouts::default()`,
//! `RetryPolicy::default()`), so a client names only what it changes.

use loraflow_core::validation::Violations;
use loraflow_core::workflow::{
    Requirements, RetryPolicy, StepKind, StepSpec, Timeouts, WorkflowSpec,
};

use super::json::{from_struct, to_struct};
use super::spec::engine;
use super::time::{duration, positive_duration};
use super::{Fields, invalid};
use crate::pb::v1 as pb;

impl From<WorkflowSpec> for pb::WorkflowSpec {
    fn from(w: WorkflowSpec) -> Self {
        Self {
            steps: w.steps.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::WorkflowSpec> for WorkflowSpec {
    type Error = Violations;

    fn try_from(w: pb::WorkflowSpec) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let steps = f.each("steps", w.steps, StepSpec::try_from);
        f.finish(Self { steps })
    }
}

impl From<StepSpec> for pb::StepSpec {
    fn from(s: StepSpec) -> Self {
        Self {
            id: s.id.0,
            kind: s.kind.0,
            depends_on: s.depends_on.into_iter().map(|d| d.0).collect(),
            requires: Some(s.requires.into()),
            timeouts: Some(s.timeouts.into()),
            retry: Some(s.retry.into()),
            params: to_struct(s.params),
        }
    }
}

impl TryFrom<pb::StepSpec> for StepSpec {
    type Error = Violations;

    fn try_from(s: pb::StepSpec) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        if s.id.is_empty() {
            f.push("id", "required; name the step (`train`)");
        }
        if s.kind.is_empty() {
            f.push(
                "kind",
                format!(
                    "required; one of {} or a registered custom kind",
                    StepKind::BUILTIN.join(", ")
                ),
            );
        }
        let requires = f.take(
            "requires",
            s.requires
                .map_or(Ok(Requirements::default()), TryInto::try_into),
        );
        let timeouts = f.take(
            "timeouts",
            s.timeouts
                .map_or(Ok(Timeouts::default()), TryInto::try_into),
        );
        let retry = f.take(
            "retry",
            s.retry
                .map_or(Ok(RetryPolicy::default()), TryInto::try_into),
        );
        let params = f.take("params", from_struct(s.params));
        let (Some(requires), Some(timeouts), Some(retry), Some(params)) =
            (requires, timeouts, retry, params)
        else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            id: s.id.into(),
            kind: StepKind(s.kind),
            depends_on: s.depends_on.into_iter().map(Into::into).collect(),
            requires,
            timeouts,
            retry,
            params,
        })
    }
}

impl From<Requirements> for pb::Requirements {
    fn from(r: Requirements) -> Self {
        Self {
            gpu: r.gpu,
            engine: r.engine.map(|e| e.as_str().to_owned()).unwrap_or_default(),
            min_vram_gb: r.min_vram_gb,
            labels: r.labels.into_iter().collect(),
        }
    }
}

impl TryFrom<pb::Requirements> for Requirements {
    type Error = Violations;

    fn try_from(r: pb::Requirements) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let engine = if r.engine.is_empty() {
            Some(None)
        } else {
            f.take("engine", engine(&r.engine)).map(Some)
        };
        for (i, label) in r.labels.iter().enumerate() {
            if label.trim().is_empty() {
                f.push(format!("labels[{i}]"), "label is empty");
            }
        }
        let Some(engine) = engine else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            gpu: r.gpu,
            engine,
            min_vram_gb: r.min_vram_gb,
            labels: r.labels.into_iter().collect(),
        })
    }
}

impl From<Timeouts> for pb::Timeouts {
    fn from(t: Timeouts) -> Self {
        Self {
            schedule_to_start: t.schedule_to_start.map(duration),
            start_to_close: Some(duration(t.start_to_close)),
            heartbeat: Some(duration(t.heartbeat)),
        }
    }
}

impl TryFrom<pb::Timeouts> for Timeouts {
    type Error = Violations;

    fn try_from(t: pb::Timeouts) -> Result<Self, Self::Error> {
        let defaults = Timeouts::default();
        let mut f = Fields::default();
        let schedule_to_start = match t.schedule_to_start {
            Some(d) => f.take("schedule_to_start", positive_duration(d)).map(Some),
            None => Some(None),
        };
        let start_to_close = f.take(
            "start_to_close",
            t.start_to_close
                .map_or(Ok(defaults.start_to_close), positive_duration),
        );
        let heartbeat = f.take(
            "heartbeat",
            t.heartbeat
                .map_or(Ok(defaults.heartbeat), positive_duration),
        );
        let (Some(schedule_to_start), Some(start_to_close), Some(heartbeat)) =
            (schedule_to_start, start_to_close, heartbeat)
        else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            schedule_to_start,
            start_to_close,
            heartbeat,
        })
    }
}

impl From<RetryPolicy> for pb::RetryPolicy {
    fn from(r: RetryPolicy) -> Self {
        Self {
            max_attempts: Some(r.max_attempts),
            initial_backoff: Some(duration(r.initial_backoff)),
            backoff_multiplier: Some(r.backoff_multiplier),
            max_backoff: Some(duration(r.max_backoff)),
            jitter: Some(r.jitter),
        }
    }
}

impl TryFrom<pb::RetryPolicy> for RetryPolicy {
    type Error = Violations;

    fn try_from(r: pb::RetryPolicy) -> Result<Self, Self::Error> {
        let defaults = RetryPolicy::default();
        let mut f = Fields::default();
        let initial_backoff = f.take(
            "initial_backoff",
            r.initial_backoff
                .map_or(Ok(defaults.initial_backoff), positive_duration),
        );
        let max_backoff = f.take(
            "max_backoff",
            r.max_backoff
                .map_or(Ok(defaults.max_backoff), positive_duration),
        );
        // Ranges (at least 1 attempt, multiplier >= 1, jitter in 0..=1) are
        // the workflow validation's to check; only what JSON cannot carry is
        // refused here.
        let finite = |v: Option<f64>, default: f64| match v {
            Some(x) if !x.is_finite() => Err(invalid(format!("{x} is not a finite number"))),
            v => Ok(v.unwrap_or(default)),
        };
        let backoff_multiplier = f.take(
            "backoff_multiplier",
            finite(r.backoff_multiplier, defaults.backoff_multiplier),
        );
        let jitter = f.take("jitter", finite(r.jitter, defaults.jitter));
        let (Some(initial_backoff), Some(max_backoff), Some(backoff_multiplier), Some(jitter)) =
            (initial_backoff, max_backoff, backoff_multiplier, jitter)
        else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
            initial_backoff,
            backoff_multiplier,
            max_backoff,
            jitter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::catalogue::{Catalogue, Engine};
    use loraflow_core::workflow::standard_lora;
    use std::time::Duration;

    #[test]
    fn standard_workflows_round_trip() {
        let catalogue = Catalogue::builtin();
        for model in &catalogue.base_models {
            for &engine in &model.engines {
                let wf = standard_lora(model, engine);
                assert_eq!(
                    WorkflowSpec::try_from(pb::WorkflowSpec::from(wf.clone())),
                    Ok(wf)
                );
            }
        }
    }

    #[test]
    fn a_step_with_everything_set_round_trips() {
        let step = StepSpec {
            id: "train".into(),
            kind: "train".into(),
            depends_on: vec!["label".into(), "validate".into()],
            requires: Requirements {
                gpu: true,
                engine: Some(Engine::AiToolkit),
                min_vram_gb: Some(24),
                labels: ["region=eu".to_owned(), "tier=a".to_owned()].into(),
            },
            timeouts: Timeouts {
                schedule_to_start: Some(Duration::from_secs(3600)),
                start_to_close: Duration::from_millis(90_500),
                heartbeat: Duration::from_secs(30),
            },
            retry: RetryPolicy {
                max_attempts: 1,
                initial_backoff: Duration::from_secs(1),
                backoff_multiplier: 1.5,
                max_backoff: Duration::from_secs(5),
                jitter: 0.0,
            },
            params: serde_json::json!({"resolution": 768, "buckets": [512, 768]}),
        };
        assert_eq!(
            StepSpec::try_from(pb::StepSpec::from(step.clone())),
            Ok(step)
        );
    }

    #[test]
    fn absent_messages_take_the_defaults() {
        let wire = pb::StepSpec {
            id: "label".into(),
            kind: "label".into(),
            ..Default::default()
        };
        assert_eq!(
            StepSpec::try_from(wire),
            Ok(StepSpec::new("label", "label"))
        );
        let partial = pb::RetryPolicy {
            jitter: Some(0.0),
            ..Default::default()
        };
        let r = RetryPolicy::try_from(partial).unwrap();
        assert_eq!(r.jitter, 0.0);
        assert_eq!(r.max_attempts, RetryPolicy::default().max_attempts);
    }

    #[test]
    fn bad_steps_name_every_field() {
        let zero = prost_types::Duration::default();
        let negative = prost_types::Duration {
            seconds: -3,
            nanos: 0,
        };
        let wire = pb::StepSpec {
            id: String::new(),
            kind: String::new(),
            depends_on: vec![],
            requires: Some(pb::Requirements {
                engine: "tensorflow".into(),
                labels: vec![String::new()],
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                schedule_to_start: Some(zero),
                start_to_close: Some(negative),
                heartbeat: None,
            }),
            retry: Some(pb::RetryPolicy {
                initial_backoff: Some(zero),
                backoff_multiplier: Some(f64::NAN),
                ..Default::default()
            }),
            params: None,
        };
        let err = StepSpec::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "kind",
                "requires.engine",
                "requires.labels[0]",
                "timeouts.schedule_to_start",
                "timeouts.start_to_close",
                "retry.initial_backoff",
                "retry.backoff_multiplier",
            ]
        );
    }
}
