//! `ExecutorService` requests, checked and turned into the job commands they
//! carry (`Heartbeat`, `CompleteStep`, `FailStep`).

use std::time::Duration;

use loraflow_core::artifact::{Artifact, EpochOutput};
use loraflow_core::executor::MAX_POLL_STEPS;
use loraflow_core::ids::{ExecutorId, JobId, LeaseId};
use loraflow_core::job::{CompleteStep, FailStep, Heartbeat, StepError, StepProgress};
use loraflow_core::validation::Violations;

use super::json::from_struct;
use super::time::non_negative_duration;
use super::{Fields, invalid, required};
use crate::pb::v1 as pb;

/// A checked executor call on one lease of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseCall<C> {
    pub executor_id: ExecutorId,
    pub job_id: JobId,
    /// The command for the job; it quotes the lease.
    pub command: C,
    /// Steps to lease to the executor once the command is recorded
    /// (`lease_next` of a completion or failure), 0 to [`MAX_POLL_STEPS`];
    /// 0 for a heartbeat.
    pub lease_next: u32,
}

fn non_empty(value: &str, what: &str) -> Result<String, Violations> {
    if value.trim().is_empty() {
        Err(invalid(format!("required; give the {what}")))
    } else {
        Ok(value.to_owned())
    }
}

/// `lease_next` of a completion or failure: 0 to [`MAX_POLL_STEPS`].
fn lease_next(n: u32) -> Result<u32, Violations> {
    if n > MAX_POLL_STEPS {
        Err(invalid(format!(
            "{n} is above the maximum of {MAX_POLL_STEPS} steps leased with an outcome; ask for {MAX_POLL_STEPS} or fewer (0: none)"
        )))
    } else {
        Ok(n)
    }
}

/// Checks the three fields every lease call has, and `lease_next`.
fn lease_call<C>(
    mut f: Fields,
    executor_id: &str,
    job_id: &str,
    lease_id: &str,
    next: u32,
    command: impl FnOnce(LeaseId) -> Option<C>,
) -> Result<LeaseCall<C>, Violations> {
    let next = f.take("lease_next", lease_next(next));
    let executor_id = f.take("executor_id", non_empty(executor_id, "executor id"));
    let lease_id = f.take(
        "lease_id",
        non_empty(lease_id, "lease id of the assignment"),
    );
    let job_id = f.take("job_id", non_empty(job_id, "job id of the assignment"));
    let (Some(executor_id), Some(lease_id), Some(job_id), Some(lease_next)) =
        (executor_id, lease_id, job_id, next)
    else {
        return Err(f.into_violations());
    };
    let Some(command) = command(LeaseId(lease_id)) else {
        return Err(f.into_violations());
    };
    f.finish(LeaseCall {
        executor_id: ExecutorId(executor_id),
        job_id: JobId(job_id),
        command,
        lease_next,
    })
}

/// A checked heartbeat: renew `lease_id`, with new progress when the
/// executor sent some.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatCall {
    pub lease_id: LeaseId,
    pub progress: Option<StepProgress>,
}

impl HeartbeatCall {
    /// The job command. The aggregate's heartbeat always records progress,
    /// so a renewal without any repeats `last` (the step's latest progress),
    /// or records zero when the attempt has reported nothing yet.
    pub fn into_command(self, last: Option<&StepProgress>) -> Heartbeat {
        Heartbeat {
            lease_id: self.lease_id,
            progress: self.progress.or_else(|| last.cloned()).unwrap_or_default(),
        }
    }
}

impl pb::HeartbeatRequest {
    pub fn into_call(self) -> Result<LeaseCall<HeartbeatCall>, Violations> {
        let mut f = Fields::default();
        let progress = self.progress.map(|mut p| {
            let outputs = std::mem::take(&mut p.outputs);
            StepProgress {
                outputs: f.each("progress.outputs", outputs, EpochOutput::try_from),
                ..StepProgress::from(p)
            }
        });
        lease_call(
            f,
            &self.executor_id,
            &self.job_id,
            &self.lease_id,
            0,
            |lease_id| Some(HeartbeatCall { lease_id, progress }),
        )
    }
}

impl pb::CompleteStepRequest {
    pub fn into_command(self) -> Result<LeaseCall<CompleteStep>, Violations> {
        let mut f = Fields::default();
        let outputs = f.take("outputs", from_struct(self.outputs));
        let artifacts = f.each("artifacts", self.artifacts, Artifact::try_from);
        let epochs = f.each("epochs", self.epochs, EpochOutput::try_from);
        lease_call(
            f,
            &self.executor_id,
            &self.job_id,
            &self.lease_id,
            self.lease_next,
            |lease_id| {
                Some(CompleteStep {
                    lease_id,
                    outputs: outputs?,
                    artifacts,
                    epochs,
                })
            },
        )
    }
}

impl pb::FailStepRequest {
    pub fn into_command(self) -> Result<LeaseCall<FailStep>, Violations> {
        let mut f = Fields::default();
        let error = f.take("error", required(self.error).and_then(StepError::try_from));
        lease_call(
            f,
            &self.executor_id,
            &self.job_id,
            &self.lease_id,
            self.lease_next,
            |lease_id| {
                Some(FailStep {
                    lease_id,
                    error: error?,
                })
            },
        )
    }
}

impl pb::PollStepRequest {
    /// The executor and how long it is willing to wait, capped at `max`.
    pub fn parse(&self, max: Duration) -> Result<(ExecutorId, Duration), Violations> {
        let mut f = Fields::default();
        let executor_id = f.take("executor_id", non_empty(&self.executor_id, "executor id"));
        let wait = f.take(
            "wait",
            self.wait.map_or(Ok(Duration::ZERO), non_negative_duration),
        );
        let (Some(executor_id), Some(wait)) = (executor_id, wait) else {
            return Err(f.into_violations());
        };
        f.finish((ExecutorId(executor_id), wait.min(max)))
    }
}

impl pb::PollStepsRequest {
    /// The executor, how long it is willing to wait (capped at `max`) and
    /// how many steps it asks for, 1 to [`MAX_POLL_STEPS`].
    pub fn parse(&self, max: Duration) -> Result<(ExecutorId, Duration, u32), Violations> {
        let mut f = Fields::default();
        let executor_id = f.take("executor_id", non_empty(&self.executor_id, "executor id"));
        let wait = f.take(
            "wait",
            self.wait.map_or(Ok(Duration::ZERO), non_negative_duration),
        );
        let steps = f.take(
            "max_steps",
            match self.max_steps {
                0 => Err(invalid(format!(
                    "0 asks for nothing; give the executor's free slots, 1 to {MAX_POLL_STEPS}"
                ))),
                n if n > MAX_POLL_STEPS => Err(invalid(format!(
                    "{n} is above the maximum of {MAX_POLL_STEPS} steps per poll; ask for {MAX_POLL_STEPS} or fewer"
                ))),
                n => Ok(n),
            },
        );
        let (Some(executor_id), Some(wait), Some(steps)) = (executor_id, wait, steps) else {
            return Err(f.into_violations());
        };
        f.finish((ExecutorId(executor_id), wait.min(max), steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::StepErrorKind;
    use loraflow_core::job::canned::outputs_for;
    use loraflow_core::workflow::StepKind;

    fn fields(v: &Violations) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn canned_completions_round_trip() {
        for kind in StepKind::BUILTIN {
            let mut c = outputs_for(&StepKind::new(kind), "lease-3".into());
            c.outputs = serde_json::json!({"images": 12, "tags": {"corgi": 12}});
            let req = pb::CompleteStepRequest {
                executor_id: "gpu-0".into(),
                lease_id: c.lease_id.0.clone(),
                job_id: "job-1".into(),
                outputs: super::super::json::to_struct(c.outputs.clone()),
                artifacts: c.artifacts.iter().cloned().map(Into::into).collect(),
                epochs: c.epochs.iter().cloned().map(Into::into).collect(),
                lease_next: 0,
            };
            let call = req.into_command().unwrap();
            assert_eq!(call.command, c, "{kind}");
            assert_eq!(call.executor_id, ExecutorId::new("gpu-0"));
            assert_eq!(call.job_id, JobId::new("job-1"));
        }
    }

    #[test]
    fn completion_paths_match_the_request() {
        let mut bad = pb::Artifact::from(loraflow_core::job::canned::artifact(
            loraflow_core::artifact::ArtifactKind::Lora,
            "e1.safetensors",
            Some(1),
        ));
        bad.sha256 = "00".into();
        let req = pb::CompleteStepRequest {
            executor_id: String::new(),
            lease_id: "l".into(),
            job_id: "j".into(),
            outputs: None,
            artifacts: vec![],
            lease_next: 0,
            epochs: vec![pb::EpochOutput {
                epoch: 1,
                lora: Some(bad),
                samples: vec![],
                loss: None,
                ..Default::default()
            }],
        };
        let err = req.into_command().unwrap_err();
        assert_eq!(fields(&err), ["epochs[0].lora.sha256", "executor_id"]);
    }

    #[test]
    fn heartbeats_may_omit_progress() {
        let req = pb::HeartbeatRequest {
            executor_id: "gpu-0".into(),
            lease_id: "l".into(),
            job_id: "j".into(),
            progress: None,
        };
        let last = StepProgress {
            percent: 40.0,
            ..Default::default()
        };
        let renew = req.clone().into_call().unwrap().command;
        assert_eq!(renew.progress, None);
        assert_eq!(renew.clone().into_command(Some(&last)).progress, last);
        assert_eq!(renew.into_command(None).progress, StepProgress::default());

        let ok = pb::HeartbeatRequest {
            progress: Some(pb::StepProgress {
                percent: 50.0,
                ..Default::default()
            }),
            ..req
        }
        .into_call()
        .unwrap();
        let hb = ok.command.into_command(Some(&last));
        assert_eq!(hb.lease_id, LeaseId::new("l"));
        assert_eq!(hb.progress.percent, 50.0);
        let missing = pb::HeartbeatRequest::default().into_call().unwrap_err();
        assert_eq!(fields(&missing), ["executor_id", "lease_id", "job_id"]);
    }

    #[test]
    fn heartbeats_carry_outputs_made_on_request_with_their_fields_checked() {
        use loraflow_core::job::canned::artifact;
        let made = EpochOutput {
            epoch: 2,
            samples: vec![artifact(
                loraflow_core::artifact::ArtifactKind::Sample,
                "s.png",
                Some(2),
            )],
            step: Some(15),
            requested: true,
            ..Default::default()
        };
        let progress = StepProgress {
            percent: 40.0,
            outputs: vec![made.clone()],
            ..Default::default()
        };
        let req = pb::HeartbeatRequest {
            executor_id: "gpu-0".into(),
            lease_id: "l".into(),
            job_id: "j".into(),
            progress: Some(progress.clone().into()),
        };
        let call = req.clone().into_call().unwrap();
        assert_eq!(call.command.progress, Some(progress));
        let mut bad = req;
        let p = bad.progress.as_mut().unwrap();
        p.outputs[0].step = None;
        p.outputs[0].samples[0].sha256 = "nope".into();
        let err = bad.into_call().unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "progress.outputs[0].samples[0].sha256",
                "progress.outputs[0].step"
            ]
        );
    }

    #[test]
    fn failures_round_trip_and_need_a_kind() {
        let error = StepError {
            kind: StepErrorKind::OutOfMemory,
            message: "CUDA out of memory at batch 4".into(),
            retryable: true,
        };
        let req = pb::FailStepRequest {
            executor_id: "gpu-0".into(),
            lease_id: "l".into(),
            job_id: "j".into(),
            error: Some(error.clone().into()),
            lease_next: 0,
        };
        assert_eq!(req.clone().into_command().unwrap().command.error, error);
        let no_kind = pb::FailStepRequest {
            error: Some(pb::StepError::default()),
            lease_id: String::new(),
            ..req
        };
        assert_eq!(
            fields(&no_kind.into_command().unwrap_err()),
            ["error.kind", "lease_id"]
        );
    }

    #[test]
    fn an_outcome_leases_at_most_64_steps_with_it() {
        let complete = |lease_next| pb::CompleteStepRequest {
            executor_id: "gpu-0".into(),
            lease_id: "l".into(),
            job_id: "j".into(),
            lease_next,
            ..Default::default()
        };
        let fail = |lease_next| pb::FailStepRequest {
            executor_id: "gpu-0".into(),
            lease_id: "l".into(),
            job_id: "j".into(),
            error: Some(pb::StepError {
                kind: pb::StepErrorKind::Internal as i32,
                ..Default::default()
            }),
            lease_next,
        };
        for n in [0, 1, MAX_POLL_STEPS] {
            assert_eq!(complete(n).into_command().unwrap().lease_next, n);
            assert_eq!(fail(n).into_command().unwrap().lease_next, n);
        }
        for bad in [MAX_POLL_STEPS + 1, u32::MAX] {
            for err in [
                complete(bad).into_command().unwrap_err(),
                fail(bad).into_command().unwrap_err(),
            ] {
                assert_eq!(fields(&err), ["lease_next"]);
                let message = &err.iter().next().unwrap().description;
                assert!(message.contains(&bad.to_string()), "{message}");
                assert!(message.contains("64"), "{message}");
            }
        }
    }

    #[test]
    fn a_batch_poll_asks_for_1_to_64_steps() {
        let max = Duration::from_secs(30);
        let req = |max_steps| pb::PollStepsRequest {
            executor_id: "gpu-0".into(),
            wait: None,
            max_steps,
        };
        assert_eq!(
            req(4).parse(max),
            Ok((ExecutorId::new("gpu-0"), Duration::ZERO, 4))
        );
        assert_eq!(req(MAX_POLL_STEPS).parse(max).unwrap().2, MAX_POLL_STEPS);
        for bad in [0, MAX_POLL_STEPS + 1, u32::MAX] {
            let v = req(bad).parse(max).unwrap_err();
            assert_eq!(fields(&v), ["max_steps"]);
            let said = v.iter().next().unwrap().description.clone();
            assert!(
                said.contains(&bad.to_string()) && said.contains("64"),
                "{said}"
            );
        }
    }

    #[test]
    fn poll_waits_are_capped() {
        let max = Duration::from_secs(30);
        let req = pb::PollStepRequest {
            executor_id: "gpu-0".into(),
            wait: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
        };
        assert_eq!(req.parse(max), Ok((ExecutorId::new("gpu-0"), max)));
        let bad = pb::PollStepRequest {
            executor_id: String::new(),
            wait: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        };
        assert_eq!(
            fields(&bad.parse(max).unwrap_err()),
            ["executor_id", "wait"]
        );
    }
}
