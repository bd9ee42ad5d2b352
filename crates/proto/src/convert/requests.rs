//! `JobService` requests, checked and turned into ids and commands.
//!
//! Who acts (the approver, the canceller) is not in the requests: it comes
//! from the caller's token, so the server passes it in. Field paths are
//! those of the request (`job.params.epochs`, `etag`).

use std::collections::BTreeMap;

use loraflow_core::catalogue::Engine;
use loraflow_core::ids::{BaseModelId, JobId, TenantId};
use loraflow_core::job::{ApproveJob, CancelJob, JobSpec, JobState, RejectJob};
use loraflow_core::validation::Violations;

use super::spec::engine;
use super::state::optional_job_state;
use super::{Fields, required};
use crate::aip;
use crate::pb::v1 as pb;

/// A checked command for one job, with the caller's etag precondition.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCall<C> {
    pub job_id: JobId,
    /// When set, act only if the job's last event sequence is still this
    /// (else ABORTED; see [`crate::status::etag_mismatch`]).
    pub etag: Option<u64>,
    pub command: C,
}

/// A checked `CreateJobRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub spec: JobSpec,
    /// Repeats with the same id return the first request's job.
    pub request_id: Option<String>,
}

impl pb::CreateJobRequest {
    /// The spec, owned by `tenant` (from the caller's token).
    pub fn into_domain(self, tenant: TenantId) -> Result<NewJob, Violations> {
        let mut f = Fields::default();
        let request_id = f.take("request_id", aip::request_id(&self.request_id));
        let spec = f.take(
            "job",
            required(self.job).and_then(|j| j.into_domain(tenant)),
        );
        let (Some(spec), Some(request_id)) = (spec, request_id) else {
            return Err(f.into_violations());
        };
        f.finish(NewJob { spec, request_id })
    }
}

impl pb::ResumeJobRequest {
    /// The request id of the `CreateJob` to finish; required.
    pub fn request_id(&self) -> Result<String, Violations> {
        let mut f = Fields::default();
        let id = f.take("request_id", aip::request_id(&self.request_id));
        match id {
            Some(Some(id)) => f.finish(id),
            Some(None) => {
                f.push(
                    "request_id",
                    "required; give the request id the job was submitted with",
                );
                Err(f.into_violations())
            }
            None => Err(f.into_violations()),
        }
    }
}

impl pb::GetJobRequest {
    /// The job named by `name` or `job_id` (if both, they must agree).
    pub fn job_id(&self) -> Result<JobId, Violations> {
        let mut f = Fields::default();
        let from_name = (!self.name.is_empty())
            .then(|| f.take("name", aip::parse_job_name(&self.name)))
            .flatten();
        let from_id = (!self.job_id.is_empty())
            .then(|| f.take("job_id", aip::job_id(&self.job_id)))
            .flatten();
        match (from_name, from_id) {
            (Some(a), Some(b)) if a != b => f.push(
                "job_id",
                format!(
                    "job_id {b} and name {} name different jobs; set one",
                    self.name
                ),
            ),
            (Some(id), _) | (None, Some(id)) => return f.finish(id),
            (None, None) if self.name.is_empty() && self.job_id.is_empty() => {
                f.push("job_id", "required; set job_id or name (jobs/{job_id})")
            }
            (None, None) => {}
        }
        Err(f.into_violations())
    }
}

fn job_id_field(id: &str) -> Result<JobId, Violations> {
    let mut f = Fields::default();
    match f.take("job_id", aip::job_id(id)) {
        Some(id) => Ok(id),
        None => Err(f.into_violations()),
    }
}

impl pb::WatchJobRequest {
    pub fn job_id(&self) -> Result<JobId, Violations> {
        job_id_field(&self.job_id)
    }
}

impl pb::GetJobHistoryRequest {
    pub fn job_id(&self) -> Result<JobId, Violations> {
        job_id_field(&self.job_id)
    }
}

/// Checks the fields every custom method has: the job id and the etag.
fn call<C>(
    mut f: Fields,
    job_id: &str,
    etag: &str,
    command: Option<C>,
) -> Result<JobCall<C>, Violations> {
    let job_id = f.take("job_id", aip::job_id(job_id));
    let etag = f.take("etag", aip::parse_etag(etag));
    let (Some(job_id), Some(etag), Some(command)) = (job_id, etag, command) else {
        return Err(f.into_violations());
    };
    f.finish(JobCall {
        job_id,
        etag,
        command,
    })
}

impl pb::CancelJobRequest {
    pub fn into_command(self, cancelled_by: &str) -> Result<JobCall<CancelJob>, Violations> {
        let command = CancelJob {
            reason: self.reason,
            cancelled_by: cancelled_by.to_owned(),
        };
        call(Fields::default(), &self.job_id, &self.etag, Some(command))
    }
}

impl pb::ApproveJobRequest {
    pub fn into_command(self, approved_by: &str) -> Result<JobCall<ApproveJob>, Violations> {
        let mut f = Fields::default();
        // proto3 cannot tell an unset epoch from 0, so the message covers
        // both and says what was received.
        match (self.epoch, self.step) {
            (0, None) => f.push(
                "epoch",
                "0 was given (an unset epoch reads as 0); epochs count from 1: name a saved epoch, or set step",
            ),
            (e, Some(step)) if e != 0 => f.push(
                "step",
                format!("both epoch {e} and step {step} were given; name one"),
            ),
            _ => {}
        }
        let command = ApproveJob {
            epoch: self.epoch,
            step: self.step,
            approved_by: approved_by.to_owned(),
        };
        call(f, &self.job_id, &self.etag, Some(command))
    }
}

impl pb::RejectJobRequest {
    pub fn into_command(self, rejected_by: &str) -> Result<JobCall<RejectJob>, Violations> {
        let mut f = Fields::default();
        if self.reason.trim().is_empty() {
            f.push("reason", "required; say why the result is refused");
        }
        let command = RejectJob {
            reason: self.reason,
            rejected_by: rejected_by.to_owned(),
        };
        call(f, &self.job_id, &self.etag, Some(command))
    }
}

/// A checked `RetryJobRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryCall {
    /// The failed job to run again.
    pub job_id: JobId,
    pub request_id: Option<String>,
}

impl pb::RetryJobRequest {
    pub fn parse(&self) -> Result<RetryCall, Violations> {
        let mut f = Fields::default();
        let job_id = f.take("job_id", aip::job_id(&self.job_id));
        let request_id = f.take("request_id", aip::request_id(&self.request_id));
        let (Some(job_id), Some(request_id)) = (job_id, request_id) else {
            return Err(f.into_violations());
        };
        f.finish(RetryCall { job_id, request_id })
    }
}

/// The filters of a `ListJobsRequest`. Part of what a page token must be
/// issued for: a token used with other filters is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub base_model: Option<BaseModelId>,
    pub engine: Option<Engine>,
    /// Every one must be carried by a job.
    pub labels: BTreeMap<String, String>,
}

impl JobFilter {
    /// Whether a job with `spec` in `state` passes the filter (the tenant is
    /// the caller's to check).
    pub fn matches(&self, spec: &JobSpec, state: JobState) -> bool {
        self.state.is_none_or(|s| s == state)
            && self
                .base_model
                .as_ref()
                .is_none_or(|m| *m == spec.base_model)
            && self.engine.is_none_or(|e| e == spec.engine)
            && self
                .labels
                .iter()
                .all(|(k, v)| spec.labels.get(k) == Some(v))
    }
}

impl pb::ListJobsRequest {
    pub fn filter(&self) -> Result<JobFilter, Violations> {
        let mut f = Fields::default();
        let state = f.take("state", optional_job_state(self.state));
        let engine = if self.engine.is_empty() {
            Some(None)
        } else {
            f.take("engine", engine(&self.engine)).map(Some)
        };
        let mut labels = BTreeMap::new();
        for (i, label) in self.labels.iter().enumerate() {
            match label.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_owned(), v.to_owned());
                }
                _ => f.push(
                    format!("labels[{i}]"),
                    format!("label filter {label:?} must be written key=value"),
                ),
            }
        }
        let (Some(state), Some(engine)) = (state, engine) else {
            return Err(f.into_violations());
        };
        f.finish(JobFilter {
            state,
            base_model: (!self.base_model.is_empty()).then(|| self.base_model.as_str().into()),
            engine,
            labels,
        })
    }

    /// The page size to use (AIP-158).
    pub fn page_size(&self) -> Result<usize, Violations> {
        let mut f = Fields::default();
        match f.take("page_size", aip::page_size(self.page_size)) {
            Some(n) => Ok(n),
            None => Err(f.into_violations()),
        }
    }
}

impl pb::GetParameterSchemaRequest {
    pub fn parse(&self) -> Result<(BaseModelId, Engine), Violations> {
        let mut f = Fields::default();
        if self.base_model.is_empty() {
            f.push("base_model", "required; see ListBaseModels");
        }
        let engine = f.take("engine", engine(&self.engine));
        let Some(engine) = engine else {
            return Err(f.into_violations());
        };
        f.finish((self.base_model.as_str().into(), engine))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::canned::sample_spec;

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn create_round_trips_the_spec_and_request_id() {
        let spec = sample_spec();
        let req = pb::CreateJobRequest {
            job: Some(spec.clone().into()),
            request_id: "0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11".into(),
            validate_only: false,
        };
        let new = req.into_domain(spec.tenant.clone()).unwrap();
        assert_eq!(new.spec, spec);
        assert_eq!(
            new.request_id.as_deref(),
            Some("0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11")
        );
    }

    #[test]
    fn resume_requires_a_well_formed_request_id() {
        let with = |id: &str| pb::ResumeJobRequest {
            request_id: id.into(),
        };
        let uuid = "0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11";
        assert_eq!(with(uuid).request_id(), Ok(uuid.to_owned()));
        for bad in ["", "has space"] {
            let err = with(bad).request_id().unwrap_err();
            assert_eq!(fields(&err), ["request_id"], "{bad:?}");
        }
        let err = with("").request_id().unwrap_err();
        assert!(err.0[0].description.starts_with("required"), "{err}");
    }

    #[test]
    fn create_paths_are_relative_to_the_request() {
        let mut job = pb::JobSpec::from(sample_spec());
        job.params
            .insert("epochs".into(), pb::ParamValue { kind: None });
        let mut step = pb::StepSpec::from(loraflow_core::workflow::StepSpec::new("t", "train"));
        step.timeouts = Some(pb::Timeouts {
            heartbeat: Some(prost_types::Duration::default()),
            ..Default::default()
        });
        job.workflow = Some(pb::WorkflowSpec {
            steps: vec![
                pb::StepSpec::from(loraflow_core::workflow::StepSpec::new("a", "label")),
                pb::StepSpec::from(loraflow_core::workflow::StepSpec::new("b", "label")),
                step,
            ],
        });
        let req = pb::CreateJobRequest {
            job: Some(job),
            request_id: "not a uuid because it is far too long".into(),
            validate_only: false,
        };
        let err = req.into_domain("acme".into()).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "request_id",
                "job.params.epochs",
                "job.workflow.steps[2].timeouts.heartbeat"
            ]
        );
        assert_eq!(err.0[2].description, "duration must be positive; got 0s");
    }

    #[test]
    fn create_without_a_job_names_it() {
        let err = pb::CreateJobRequest::default()
            .into_domain("acme".into())
            .unwrap_err();
        assert_eq!(fields(&err), ["job"]);
    }

    #[test]
    fn get_by_name_or_id() {
        let by_name = pb::GetJobRequest {
            name: "jobs/j1".into(),
            job_id: String::new(),
        };
        assert_eq!(by_name.job_id(), Ok(JobId::new("j1")));
        let by_id = pb::GetJobRequest {
            name: String::new(),
            job_id: "j1".into(),
        };
        assert_eq!(by_id.job_id(), Ok(JobId::new("j1")));
        let both = pb::GetJobRequest {
            name: "jobs/j1".into(),
            job_id: "j2".into(),
        };
        assert_eq!(fields(&both.job_id().unwrap_err()), ["job_id"]);
        let bad = pb::GetJobRequest {
            name: "projects/x".into(),
            job_id: String::new(),
        };
        assert_eq!(fields(&bad.job_id().unwrap_err()), ["name"]);
        assert_eq!(
            fields(&pb::GetJobRequest::default().job_id().unwrap_err()),
            ["job_id"]
        );
    }

    #[test]
    fn custom_methods_check_id_etag_and_their_fields() {
        let ok = pb::ApproveJobRequest {
            job_id: "j1".into(),
            epoch: 2,
            etag: "9".into(),
            step: None,
        }
        .into_command("reviewer@acme")
        .unwrap();
        assert_eq!(
            ok,
            JobCall {
                job_id: "j1".into(),
                etag: Some(9),
                command: ApproveJob {
                    epoch: 2,
                    step: None,
                    approved_by: "reviewer@acme".into()
                }
            }
        );
        let by_step = pb::ApproveJobRequest {
            job_id: "j1".into(),
            step: Some(25),
            ..Default::default()
        }
        .into_command("r")
        .unwrap();
        assert_eq!(by_step.command.step, Some(25));
        let both = pb::ApproveJobRequest {
            job_id: "j1".into(),
            epoch: 2,
            step: Some(25),
            ..Default::default()
        }
        .into_command("r")
        .unwrap_err();
        assert_eq!(fields(&both), ["step"]);
        let err = pb::ApproveJobRequest {
            job_id: String::new(),
            epoch: 0,
            etag: "x".into(),
            step: None,
        }
        .into_command("r")
        .unwrap_err();
        assert_eq!(fields(&err), ["epoch", "job_id", "etag"]);
        let epoch = err.iter().next().unwrap().description.clone();
        assert!(
            epoch.starts_with("0 was given") && epoch.contains("epochs count from 1"),
            "{epoch}"
        );

        let err = pb::RejectJobRequest {
            job_id: "j1".into(),
            reason: " ".into(),
            etag: String::new(),
        }
        .into_command("r")
        .unwrap_err();
        assert_eq!(fields(&err), ["reason"]);

        let cancel = pb::CancelJobRequest {
            job_id: "j1".into(),
            reason: String::new(),
            etag: String::new(),
        }
        .into_command("alice")
        .unwrap();
        assert_eq!(cancel.etag, None);
        assert_eq!(cancel.command.cancelled_by, "alice");
    }

    #[test]
    fn retry_checks_id_and_request_id() {
        let r = pb::RetryJobRequest {
            job_id: "j1".into(),
            request_id: String::new(),
        };
        assert_eq!(
            r.parse(),
            Ok(RetryCall {
                job_id: "j1".into(),
                request_id: None
            })
        );
        let bad = pb::RetryJobRequest {
            job_id: String::new(),
            request_id: "a b".into(),
        };
        assert_eq!(fields(&bad.parse().unwrap_err()), ["job_id", "request_id"]);
    }

    #[test]
    fn list_filters_parse_and_match() {
        let req = pb::ListJobsRequest {
            state: pb::JobState::Pending as i32,
            base_model: "sd15".into(),
            engine: "native".into(),
            labels: vec!["team=vision".into()],
            ..Default::default()
        };
        let filter = req.filter().unwrap();
        let mut spec = sample_spec();
        assert!(!filter.matches(&spec, JobState::Pending), "label missing");
        spec.labels.insert("team".into(), "vision".into());
        assert!(filter.matches(&spec, JobState::Pending));
        assert!(!filter.matches(&spec, JobState::Failed));
        assert!(JobFilter::default().matches(&spec, JobState::Failed));

        let bad = pb::ListJobsRequest {
            page_size: -1,
            state: 99,
            engine: "onnx".into(),
            labels: vec!["ok=1".into(), "novalue".into(), "=x".into()],
            ..Default::default()
        };
        assert_eq!(
            fields(&bad.filter().unwrap_err()),
            ["state", "engine", "labels[1]", "labels[2]"]
        );
        assert_eq!(fields(&bad.page_size().unwrap_err()), ["page_size"]);
    }

    #[test]
    fn schema_requests_need_model_and_engine() {
        let ok = pb::GetParameterSchemaRequest {
            base_model: "sdxl".into(),
            engine: "kohya".into(),
        };
        assert_eq!(ok.parse(), Ok(("sdxl".into(), Engine::Kohya)));
        let err = pb::GetParameterSchemaRequest::default()
            .parse()
            .unwrap_err();
        assert_eq!(fields(&err), ["base_model", "engine"]);
    }
}
