//! What executors offer and what they are given: `Capabilities` and
//! `StepAssignment`, plus the requests a worker builds from its results.
//!
//! The server side turns requests into commands in [`executor`](super::executor);
//! this file serves both ends of the assignment and the worker's client.

use std::time::Duration;

use chrono::{DateTime, Utc};
use loraflow_core::artifact::{Artifact, EpochOutput};
use loraflow_core::executor::{Capabilities, InstalledModel, StepAssignment, StepOutput};
use loraflow_core::ids::{ExecutorId, InstanceId, JobId, LeaseId};
use loraflow_core::job::{DatasetRef, Naming, StepError, StepProgress};
use loraflow_core::validation::Violations;
use loraflow_core::workflow::StepKind;

use super::catalogue::model_family;
use super::json::{from_struct, to_struct};
use super::params::{params_from_wire, params_to_wire};
use super::spec::engine;
use super::time::{datetime, duration, positive_duration, timestamp};
use super::{Fields, invalid, required};
use crate::pb::v1 as pb;

impl From<Capabilities> for pb::ExecutorCapabilities {
    fn from(c: Capabilities) -> Self {
        Self {
            kinds: c.kinds.into_iter().map(|k| k.0).collect(),
            engines: c.engines.iter().map(|e| e.as_str().to_owned()).collect(),
            model_families: c.model_families.iter().map(ToString::to_string).collect(),
            gpu: c.gpu,
            gpu_name: c.gpu_name.unwrap_or_default(),
            vram_gb: c.vram_gb,
            max_concurrent_steps: c.max_concurrent_steps,
            labels: c.labels.into_iter().collect(),
            base_models: c
                .base_models
                .into_iter()
                .map(|m| pb::InstalledModel {
                    engine: m.engine.as_str().to_owned(),
                    model: m.model.0,
                })
                .collect(),
        }
    }
}

/// The most installed models one executor may list.
pub const MAX_INSTALLED_MODELS: usize = 1024;
/// The longest base model id an executor may list.
pub const MAX_MODEL_ID_LEN: usize = 128;

/// Names are checked here; whether the whole makes sense (at least one
/// kind, no memory without a GPU) is [`Capabilities::problem`]'s to say,
/// which [`pb::RegisterExecutorRequest::into_domain`] asks.
impl TryFrom<pb::ExecutorCapabilities> for Capabilities {
    type Error = Violations;

    fn try_from(c: pb::ExecutorCapabilities) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        for (i, k) in c.kinds.iter().enumerate() {
            if k.trim().is_empty() {
                f.push(format!("kinds[{i}]"), "step kind is empty");
            }
        }
        let engines = f.each("engines", c.engines, |e| engine(&e));
        let families = f.each("model_families", c.model_families, |m| model_family(&m));
        if c.base_models.len() > MAX_INSTALLED_MODELS {
            f.push(
                "base_models",
                format!(
                    "{} installed models; at most {MAX_INSTALLED_MODELS} may be listed",
                    c.base_models.len()
                ),
            );
        }
        let mut base_models = std::collections::BTreeSet::new();
        for (i, m) in c.base_models.into_iter().enumerate() {
            let model = m.model.trim();
            if model.is_empty() || model.chars().count() > MAX_MODEL_ID_LEN {
                f.push(
                    format!("base_models[{i}].model"),
                    format!(
                        "{:?} must be a base model id of 1 to {MAX_MODEL_ID_LEN} characters",
                        loraflow_core::limits::truncate(&m.model, MAX_MODEL_ID_LEN + 8)
                    ),
                );
                continue;
            }
            if let Some(e) = f.take(&format!("base_models[{i}].engine"), engine(&m.engine)) {
                base_models.insert(InstalledModel::new(e, model));
            }
        }
        f.finish(Self {
            kinds: c.kinds.into_iter().map(StepKind).collect(),
            engines: engines.into_iter().collect(),
            model_families: families.into_iter().collect(),
            gpu: c.gpu,
            gpu_name: (!c.gpu_name.is_empty()).then_some(c.gpu_name),
            vram_gb: c.vram_gb,
            // The wire's zero is "unset"; one step at a time is the safe default.
            max_concurrent_steps: c.max_concurrent_steps.max(1),
            labels: c.labels.into_iter().collect(),
            base_models,
        })
    }
}

impl pb::RegisterExecutorRequest {
    pub fn into_domain(self) -> Result<(ExecutorId, Capabilities), Violations> {
        let mut f = Fields::default();
        if self.executor_id.trim().is_empty() {
            f.push("executor_id", "required; name the executor (`gpu-box-3/0`)");
        }
        let caps = f.take(
            "capabilities",
            required(self.capabilities)
                .and_then(Capabilities::try_from)
                .and_then(|c| match c.problem() {
                    Some(problem) => Err(invalid(problem)),
                    None => Ok(c),
                }),
        );
        let Some(caps) = caps else {
            return Err(f.into_violations());
        };
        f.finish((ExecutorId(self.executor_id), caps))
    }
    /// The registering process, if the worker named one: at most
    /// [`MAX_INSTANCE_ID_LEN`] printable ASCII characters.
    pub fn instance(&self) -> Result<Option<InstanceId>, Violations> {
        let id = self.instance_id.as_str();
        if id.is_empty() {
            Ok(None)
        } else if id.len() > MAX_INSTANCE_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
            let mut v = Violations::default();
            v.push(
                "instance_id",
                format!(
                    "instance id {id:?} must be at most {MAX_INSTANCE_ID_LEN} printable ASCII characters; use a UUID made when the worker starts"
                ),
            );
            Err(v)
        } else {
            Ok(Some(InstanceId::new(id)))
        }
    }
}

/// The longest `RegisterExecutorRequest.instance_id`.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// How the server paces a worker: heartbeat interval and longest poll.
impl pb::RegisterExecutorResponse {
    pub fn new(heartbeat_interval: Duration, poll_timeout: Duration) -> Self {
        Self {
            heartbeat_interval: Some(duration(heartbeat_interval)),
            poll_timeout: Some(duration(poll_timeout)),
        }
    }

    /// `(heartbeat_interval, poll_timeout)`, both required and positive.
    pub fn parse(&self) -> Result<(Duration, Duration), Violations> {
        let mut f = Fields::default();
        let hb = f.take(
            "heartbeat_interval",
            required(self.heartbeat_interval).and_then(positive_duration),
        );
        let poll = f.take(
            "poll_timeout",
            required(self.poll_timeout).and_then(positive_duration),
        );
        let (Some(hb), Some(poll)) = (hb, poll) else {
            return Err(f.into_violations());
        };
        f.finish((hb, poll))
    }
}

/// The lease facts an assignment carries on the wire besides the domain
/// `StepAssignment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// Heartbeat deadline; each heartbeat moves it.
    pub deadline: DateTime<Utc>,
    /// Start-to-close deadline; heartbeats do not move it.
    pub close_by: DateTime<Utc>,
    /// Longest silence between heartbeats the step allows.
    pub heartbeat_timeout: Duration,
}

/// An assignment on the wire, with its lease times.
pub fn assignment_to_wire(a: StepAssignment, lease: LeaseTimes) -> pb::StepAssignment {
    pb::StepAssignment {
        job_id: a.job_id.0,
        step_id: a.step_id.0,
        kind: a.kind.0,
        attempt: a.attempt,
        lease_id: a.lease_id.0,
        lease_deadline: Some(timestamp(lease.deadline)),
        close_by: Some(timestamp(lease.close_by)),
        heartbeat_timeout: Some(duration(lease.heartbeat_timeout)),
        params: params_to_wire(a.params),
        step_params: to_struct(a.step_params),
        base_model: a.base_model.0,
        engine: a.engine.as_str().to_owned(),
        model_family: a.model_family.map(|m| m.to_string()).unwrap_or_default(),
        base_model_uri: a.base_model_uri.unwrap_or_default(),
        dataset: Some(a.dataset.into()),
        sample_prompts: a.sample_prompts,
        naming: Some(a.naming.into()),
        inputs: a.inputs.into_iter().map(Into::into).collect(),
        epochs: a.epochs.into_iter().map(Into::into).collect(),
        approved_epoch: a.approved_epoch,
        approved_step: a.approved_step,
    }
}

impl pb::StepAssignment {
    /// The lease times, all required.
    pub fn lease_times(&self) -> Result<LeaseTimes, Violations> {
        let mut f = Fields::default();
        let deadline = f.take(
            "lease_deadline",
            required(self.lease_deadline).and_then(datetime),
        );
        let close_by = f.take("close_by", required(self.close_by).and_then(datetime));
        let heartbeat_timeout = f.take(
            "heartbeat_timeout",
            required(self.heartbeat_timeout).and_then(positive_duration),
        );
        let (Some(deadline), Some(close_by), Some(heartbeat_timeout)) =
            (deadline, close_by, heartbeat_timeout)
        else {
            return Err(f.into_violations());
        };
        f.finish(LeaseTimes {
            deadline,
            close_by,
            heartbeat_timeout,
        })
    }
}

/// What the worker runs. The lease times are read with
/// [`pb::StepAssignment::lease_times`].
impl TryFrom<pb::StepAssignment> for StepAssignment {
    type Error = Violations;

    fn try_from(a: pb::StepAssignment) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        for (field, value) in [
            ("job_id", &a.job_id),
            ("step_id", &a.step_id),
            ("kind", &a.kind),
            ("lease_id", &a.lease_id),
        ] {
            if value.is_empty() {
                f.push(field, "required");
            }
        }
        let params = f.take("params", params_from_wire(a.params));
        let step_params = f.take("step_params", from_struct(a.step_params));
        let engine = f.take("engine", engine(&a.engine));
        let family = if a.model_family.is_empty() {
            Some(None)
        } else {
            f.take("model_family", model_family(&a.model_family))
                .map(Some)
        };
        let dataset = f.take(
            "dataset",
            required(a.dataset).and_then(DatasetRef::try_from),
        );
        let naming = f.take("naming", required(a.naming).map(Naming::from));
        let inputs = f.each("inputs", a.inputs, Artifact::try_from);
        let epochs = f.each("epochs", a.epochs, EpochOutput::try_from);
        let (
            Some(params),
            Some(step_params),
            Some(engine),
            Some(model_family),
            Some(dataset),
            Some(naming),
        ) = (params, step_params, engine, family, dataset, naming)
        else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            job_id: JobId(a.job_id),
            step_id: a.step_id.into(),
            kind: StepKind(a.kind),
            attempt: a.attempt,
            lease_id: LeaseId(a.lease_id),
            params,
            step_params,
            base_model: a.base_model.into(),
            engine,
            model_family,
            base_model_uri: Some(a.base_model_uri).filter(|u| !u.is_empty()),
            dataset,
            sample_prompts: a.sample_prompts,
            naming,
            inputs,
            epochs,
            approved_epoch: a.approved_epoch,
            approved_step: a.approved_step,
        })
    }
}

impl pb::HeartbeatRequest {
    /// A worker's heartbeat on `step`'s lease.
    pub fn new(
        executor: &ExecutorId,
        step: &StepAssignment,
        progress: Option<StepProgress>,
    ) -> Self {
        Self {
            executor_id: executor.0.clone(),
            lease_id: step.lease_id.0.clone(),
            job_id: step.job_id.0.clone(),
            progress: progress.map(Into::into),
        }
    }
}

impl pb::CompleteStepRequest {
    /// A worker's completion of `step` with `output`.
    pub fn new(executor: &ExecutorId, step: &StepAssignment, output: StepOutput) -> Self {
        Self {
            executor_id: executor.0.clone(),
            lease_id: step.lease_id.0.clone(),
            job_id: step.job_id.0.clone(),
            outputs: to_struct(output.outputs),
            artifacts: output.artifacts.into_iter().map(Into::into).collect(),
            epochs: output.epochs.into_iter().map(Into::into).collect(),
            lease_next: 0,
        }
    }
}

impl pb::FailStepRequest {
    /// A worker's report that `step` failed with `error`.
    pub fn new(executor: &ExecutorId, step: &StepAssignment, error: StepError) -> Self {
        Self {
            executor_id: executor.0.clone(),
            lease_id: step.lease_id.0.clone(),
            job_id: step.job_id.0.clone(),
            error: Some(error.into()),
            lease_next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::artifact::ArtifactKind;
    use loraflow_core::catalogue::{Engine, ModelFamily, ParamValue};
    use loraflow_core::job::StepErrorKind;
    use loraflow_core::job::canned::{artifact, outputs_for, sample_spec};

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    fn gpu_caps() -> Capabilities {
        Capabilities {
            kinds: [StepKind::new("train"), StepKind::new("sample")].into(),
            engines: [Engine::Native, Engine::Kohya].into(),
            model_families: [ModelFamily::Sd15, ModelFamily::Sdxl].into(),
            gpu: true,
            gpu_name: Some("NVIDIA H100 80GB HBM3".into()),
            vram_gb: 80,
            max_concurrent_steps: 2,
            labels: ["region=eu".to_owned()].into(),
            base_models: [
                InstalledModel::new(Engine::Native, "sd15"),
                InstalledModel::new(Engine::Kohya, "sdxl"),
            ]
            .into(),
        }
    }

    fn assignment() -> StepAssignment {
        let spec = sample_spec();
        let train = outputs_for(&StepKind::new(StepKind::TRAIN), "lease-1".into());
        StepAssignment {
            job_id: "job-1".into(),
            step_id: "sample".into(),
            kind: StepKind::new(StepKind::SAMPLE),
            attempt: 2,
            lease_id: "lease-4".into(),
            params: [("epochs".to_owned(), ParamValue::Int(2))].into(),
            step_params: serde_json::json!({"steps": 20}),
            base_model: spec.base_model,
            engine: spec.engine,
            model_family: Some(ModelFamily::Sd15),
            base_model_uri: Some("file:///srv/acme/models/studio-sd/".into()),
            dataset: spec.dataset,
            sample_prompts: spec.sample_prompts,
            naming: spec.naming,
            inputs: vec![artifact(ArtifactKind::Manifest, "manifest.json", None)],
            epochs: train.epochs,
            approved_epoch: Some(2),
            approved_step: None,
        }
    }

    fn times() -> LeaseTimes {
        LeaseTimes {
            deadline: DateTime::from_timestamp(1_767_225_660, 0).unwrap(),
            close_by: DateTime::from_timestamp(1_767_268_800, 0).unwrap(),
            heartbeat_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn capabilities_round_trip() {
        for caps in [
            gpu_caps(),
            Capabilities {
                kinds: [StepKind::new("label")].into(),
                ..Capabilities::default()
            },
        ] {
            let wire = pb::ExecutorCapabilities::from(caps.clone());
            assert_eq!(Capabilities::try_from(wire), Ok(caps));
        }
    }

    #[test]
    fn registration_checks_names_and_sense() {
        let ok = pb::RegisterExecutorRequest {
            executor_id: "gpu-box-3/0".into(),
            capabilities: Some(gpu_caps().into()),
            instance_id: String::new(),
        };
        assert_eq!(ok.into_domain(), Ok(("gpu-box-3/0".into(), gpu_caps())));

        let mut wire = pb::ExecutorCapabilities::from(gpu_caps());
        wire.engines.push("onnx".into());
        wire.model_families.insert(0, "sd3".into());
        let bad = pb::RegisterExecutorRequest {
            executor_id: String::new(),
            capabilities: Some(wire),
            instance_id: String::new(),
        };
        assert_eq!(
            fields(&bad.into_domain().unwrap_err()),
            [
                "executor_id",
                "capabilities.engines[2]",
                "capabilities.model_families[0]"
            ]
        );

        let senseless = pb::RegisterExecutorRequest {
            executor_id: "cpu-1".into(),
            capabilities: Some(pb::ExecutorCapabilities::default()),
            instance_id: String::new(),
        };
        let err = senseless.into_domain().unwrap_err();
        assert_eq!(fields(&err), ["capabilities"]);
        assert!(err.0[0].description.contains("step kind"), "{err}");
    }

    #[test]
    fn installed_models_are_checked_and_bounded() {
        let mut wire = pb::ExecutorCapabilities::from(gpu_caps());
        wire.base_models.push(pb::InstalledModel {
            engine: "onnx".into(),
            model: "sd15".into(),
        });
        wire.base_models.push(pb::InstalledModel {
            engine: "native".into(),
            model: "x".repeat(MAX_MODEL_ID_LEN + 1),
        });
        let err = Capabilities::try_from(wire.clone()).unwrap_err();
        assert_eq!(
            fields(&err),
            ["base_models[2].engine", "base_models[3].model"]
        );
        wire.base_models = (0..=MAX_INSTALLED_MODELS)
            .map(|i| pb::InstalledModel {
                engine: "native".into(),
                model: format!("m{i}"),
            })
            .collect();
        assert_eq!(
            fields(&Capabilities::try_from(wire).unwrap_err()),
            ["base_models"]
        );
    }

    #[test]
    fn registration_names_the_process_or_none() {
        let with = |id: &str| pb::RegisterExecutorRequest {
            executor_id: "gpu-1".into(),
            capabilities: Some(gpu_caps().into()),
            instance_id: id.into(),
        };
        assert_eq!(with("").instance(), Ok(None));
        let uuid = "0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11";
        assert_eq!(with(uuid).instance(), Ok(Some(uuid.into())));
        for bad in ["has space", &"x".repeat(65)] {
            let err = with(bad).instance().unwrap_err();
            assert_eq!(fields(&err), ["instance_id"]);
            assert!(err.0[0].description.contains("at most 64"), "{err}");
        }
    }

    #[test]
    fn registration_answers_round_trip() {
        let r = pb::RegisterExecutorResponse::new(Duration::from_secs(15), Duration::from_secs(30));
        assert_eq!(
            r.parse(),
            Ok((Duration::from_secs(15), Duration::from_secs(30)))
        );
        assert_eq!(
            fields(&pb::RegisterExecutorResponse::default().parse().unwrap_err()),
            ["heartbeat_interval", "poll_timeout"]
        );
    }

    #[test]
    fn assignments_round_trip_with_their_lease_times() {
        let wire = assignment_to_wire(assignment(), times());
        assert_eq!(wire.lease_times(), Ok(times()));
        assert_eq!(StepAssignment::try_from(wire), Ok(assignment()));
        let no_family = StepAssignment {
            model_family: None,
            base_model_uri: None,
            step_params: serde_json::Value::Null,
            approved_epoch: None,
            approved_step: None,
            ..assignment()
        };
        let wire = assignment_to_wire(no_family.clone(), times());
        assert_eq!(StepAssignment::try_from(wire), Ok(no_family));
    }

    #[test]
    fn malformed_assignments_name_their_fields() {
        let mut wire = assignment_to_wire(assignment(), times());
        wire.lease_id.clear();
        wire.engine = "onnx".into();
        wire.inputs[0].sha256 = "x".into();
        wire.naming = None;
        wire.lease_deadline = None;
        assert_eq!(fields(&wire.lease_times().unwrap_err()), ["lease_deadline"]);
        assert_eq!(
            fields(&StepAssignment::try_from(wire).unwrap_err()),
            ["lease_id", "engine", "naming", "inputs[0].sha256"]
        );
    }

    #[test]
    fn worker_requests_convert_back_into_commands() {
        let executor = ExecutorId::new("gpu-0");
        let step = assignment();
        let train = outputs_for(&StepKind::new(StepKind::TRAIN), step.lease_id.clone());
        let output = StepOutput {
            outputs: serde_json::json!({"images": 12}),
            artifacts: train.artifacts.clone(),
            epochs: train.epochs.clone(),
        };
        let call = pb::CompleteStepRequest::new(&executor, &step, output.clone())
            .into_command()
            .unwrap();
        assert_eq!((&call.executor_id, &call.job_id), (&executor, &step.job_id));
        assert_eq!(call.command.lease_id, step.lease_id);
        assert_eq!(call.command.outputs, output.outputs);
        assert_eq!(call.command.epochs, output.epochs);

        let error = StepError {
            kind: StepErrorKind::Unavailable,
            message: "object store timed out".into(),
            retryable: true,
        };
        let call = pb::FailStepRequest::new(&executor, &step, error.clone())
            .into_command()
            .unwrap();
        assert_eq!(call.command.error, error);

        let progress = StepProgress {
            percent: 12.5,
            epoch: Some(1),
            ..Default::default()
        };
        let call = pb::HeartbeatRequest::new(&executor, &step, Some(progress.clone()))
            .into_call()
            .unwrap();
        assert_eq!(call.command.progress, Some(progress));
        let renew = pb::HeartbeatRequest::new(&executor, &step, None)
            .into_call()
            .unwrap();
        assert_eq!(renew.command.progress, None);
    }
}
