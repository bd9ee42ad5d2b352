//! The whole command × state matrix: one command of every kind against a job
//! in every state (canned histories, plus a job never created), each either
//! accepted or refused with the typed error the table names. A refusal
//! writes nothing.

use cqrs_es::test::TestFramework;

use crate::ids::{ExecutorId, InstanceId, LeaseId, StepId};
use crate::job::canned::{Driver, histories, outputs_for, sample_dataset, sample_spec};
use crate::job::*;
use crate::workflow::StepKind;

/// The commands, one per kind, in this order (see [`kind`]).
const KINDS: [&str; 13] = [
    "create",
    "submit",
    "lease_step",
    "heartbeat",
    "complete_step",
    "fail_step",
    "expire_lease",
    "expire_queued_step",
    "approve",
    "reject",
    "cancel",
    "fail",
    "expire_restarted_lease",
];

/// The place of a command in [`KINDS`]. The match is exhaustive, so a new
/// kind of command does not compile until the matrix covers it.
fn kind(c: &JobCommand) -> usize {
    match c {
        JobCommand::Create(_) => 0,
        JobCommand::Submit(_) => 1,
        JobCommand::LeaseStep(_) => 2,
        JobCommand::Heartbeat(_) => 3,
        JobCommand::CompleteStep(_) => 4,
        JobCommand::FailStep(_) => 5,
        JobCommand::ExpireLease(_) => 6,
        JobCommand::ExpireQueuedStep(_) => 7,
        JobCommand::Approve(_) => 8,
        JobCommand::Reject(_) => 9,
        JobCommand::Cancel(_) => 10,
        JobCommand::Fail(_) => 11,
        JobCommand::ExpireRestartedLease(_) => 12,
    }
}

/// A lease id the job never issued: what a step command quotes when the job
/// has no current lease.
fn never_issued() -> LeaseId {
    LeaseId::new("never-issued")
}

/// The step a lease or queue-expiry command aims at: the first queued one,
/// else `validate`.
fn target_step(job: &TrainingJob) -> StepId {
    job.steps()
        .iter()
        .find(|(_, s)| matches!(s.status, StepStatus::Queued { .. }))
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| StepId::new("validate"))
}

/// The job's current lease, with its step's kind.
fn current_lease(job: &TrainingJob) -> Option<(LeaseId, StepKind)> {
    job.steps()
        .values()
        .find_map(|s| s.current_lease().map(|l| (l.clone(), s.kind.clone())))
}

/// One command of every kind, aimed at the job as it is.
fn commands(job: &TrainingJob) -> Vec<JobCommand> {
    let (lease, lease_kind) =
        current_lease(job).unwrap_or_else(|| (never_issued(), StepKind::TRAIN.into()));
    let step = target_step(job);
    let holder = job
        .steps()
        .values()
        .find_map(|s| match &s.status {
            StepStatus::Leased { executor_id, .. } => Some(executor_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| ExecutorId::new("gpu-9"));
    vec![
        JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: sample_spec(),
        }),
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }),
        JobCommand::LeaseStep(LeaseStep {
            step_id: step.clone(),
            lease_id: LeaseId::new("fresh-lease"),
            executor_id: ExecutorId::new("gpu-9"),
            instance: None,
        }),
        JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress {
                percent: 40.0,
                ..Default::default()
            },
        }),
        JobCommand::CompleteStep(outputs_for(&lease_kind, lease.clone())),
        JobCommand::FailStep(FailStep {
            lease_id: lease.clone(),
            error: StepError {
                kind: StepErrorKind::Unavailable,
                message: "node drained".into(),
                retryable: true,
            },
        }),
        JobCommand::ExpireLease(ExpireLease {
            lease_id: lease.clone(),
        }),
        JobCommand::ExpireQueuedStep(ExpireQueuedStep {
            step_id: step,
            unservable: None,
        }),
        JobCommand::Approve(ApproveJob {
            epoch: 2,
            step: None,
            approved_by: "reviewer@acme".into(),
        }),
        JobCommand::Reject(RejectJob {
            reason: "off-model".into(),
            rejected_by: "reviewer@acme".into(),
        }),
        JobCommand::Cancel(CancelJob {
            reason: "not needed".into(),
            cancelled_by: "alice".into(),
        }),
        JobCommand::Fail(FailJob {
            reason: FailureReason::ExecutorLost,
            message: "node gone".into(),
        }),
        JobCommand::ExpireRestartedLease(ExpireRestartedLease {
            lease_id: lease,
            executor_id: holder,
            instance: InstanceId::new("restarted-process"),
        }),
    ]
}

/// What a command does to a job in some state.
#[derive(Debug, Clone)]
enum Expect {
    /// Accepted, with at least one event.
    Accepted,
    /// Accepted as a repeat: no event.
    Repeat,
    /// `IllegalTransition { command, state }` for this cell.
    Illegal,
    /// Refused with exactly this error.
    Refused(Error),
}

use Expect::{Accepted as A, Illegal as I, Repeat as R};

fn refused(e: Error) -> Expect {
    Expect::Refused(e)
}

/// The job never created, then one history per state (two for Failed: a
/// cancelled job accepts a repeated cancel, a rejected one does not).
fn rows() -> Vec<(&'static str, Vec<JobEvent>)> {
    vec![
        ("never created", vec![]),
        ("Pending", histories::created()),
        ("Submitted", histories::submitted()),
        ("Processing", histories::processing()),
        ("InReview", histories::in_review()),
        ("Approved", histories::approved()),
        ("Published", histories::published()),
        ("Failed (cancelled)", histories::cancelled_while_training()),
        ("Failed (rejected)", histories::rejected()),
    ]
}

/// The expected outcome of each command of [`commands`], in [`KINDS`] order.
fn expected(row: &str, job: &TrainingJob) -> [Expect; 13] {
    let exists = || {
        refused(Error::AlreadyExists {
            job_id: "job-1".into(),
        })
    };
    let unknown_lease = || {
        refused(Error::UnknownLease {
            lease_id: never_issued(),
        })
    };
    let nf = || refused(Error::NotFound);
    match row {
        "never created" => [
            A,
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
            nf(),
        ],
        "Pending" => [exists(), A, I, I, I, I, I, I, I, I, A, A, I],
        "Submitted" => [
            exists(),
            I,
            A,
            unknown_lease(),
            unknown_lease(),
            unknown_lease(),
            unknown_lease(),
            refused(Error::QueueNotExpired {
                step: "validate".into(),
            }),
            I,
            I,
            A,
            A,
            unknown_lease(),
        ],
        "Processing" => {
            let StepStatus::Leased {
                deadline, close_by, ..
            } = job.steps()[&StepId::new("validate")].status
            else {
                panic!("validate is leased in this history")
            };
            [
                exists(),
                I,
                refused(Error::StepNotReady {
                    step: "validate".into(),
                    action: "leased",
                    status: "leased",
                }),
                A,
                A,
                A,
                refused(Error::LeaseNotExpired {
                    lease_id: "lease-1".into(),
                    deadline: deadline.min(close_by),
                }),
                refused(Error::StepNotReady {
                    step: "validate".into(),
                    action: "expired",
                    status: "leased",
                }),
                I,
                I,
                A,
                A,
                A,
            ]
        }
        "InReview" => [exists(), I, I, I, I, I, I, I, A, A, A, A, I],
        "Approved" => [
            exists(),
            I,
            A,
            unknown_lease(),
            unknown_lease(),
            unknown_lease(),
            unknown_lease(),
            refused(Error::QueueNotExpired {
                step: "publish".into(),
            }),
            I,
            I,
            A,
            A,
            unknown_lease(),
        ],
        "Published" | "Failed (rejected)" => [exists(), I, I, I, I, I, I, I, I, I, I, I, I],
        "Failed (cancelled)" => [exists(), I, I, I, I, I, I, I, I, I, R, I, I],
        other => panic!("no expectations for {other}"),
    }
}

#[test]
fn every_command_in_every_state_is_accepted_or_refused_with_its_typed_error() {
    let mut cells = 0;
    for (row, history) in rows() {
        let job = replay(history.clone());
        let state = job.state();
        assert_eq!(
            state.map(|s| s.as_str()),
            row.split(' ').next().filter(|_| row != "never created"),
            "the history of row {row} is in the wrong state"
        );
        let commands = commands(&job);
        let kinds: Vec<usize> = commands.iter().map(kind).collect();
        assert_eq!(kinds, (0..KINDS.len()).collect::<Vec<_>>());
        for (command, expect) in commands.into_iter().zip(expected(row, &job)) {
            let name = command.name();
            assert_eq!(name, KINDS[kind(&command)]);
            let services = Driver::new().services;
            let when = TestFramework::<TrainingJob>::with(services.clone())
                .given(history.clone())
                .when(command.clone());
            match expect {
                Expect::Accepted => {
                    let events = when
                        .inspect_result()
                        .unwrap_or_else(|e| panic!("{name} in {row}: refused with {e:?}"));
                    assert!(!events.is_empty(), "{name} in {row} emitted nothing");
                }
                Expect::Repeat => when.then_expect_events(vec![]),
                Expect::Illegal => when.then_expect_error(Error::IllegalTransition {
                    command: name,
                    state: state.expect("an illegal transition needs a state"),
                }),
                Expect::Refused(e) => when.then_expect_error(e),
            }
            // Whatever the outcome, a refusal leaves the job as it was.
            let mut d = Driver::new();
            d.events = history.clone();
            d.job = job.clone();
            if d.exec(command).is_err() {
                assert_eq!(d.job, job, "{name} in {row} changed the job");
                assert_eq!(d.events, history, "{name} in {row} wrote events");
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 9 * KINDS.len());
}
