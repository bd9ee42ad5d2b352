//! Property tests: random command sequences against the aggregate.
//!
//! After every command: (a) folding all emitted events from `Default`
//! reproduces the state; (b) a terminal job emits nothing; (c) no step attempt
//! has more than one terminal outcome; (d) nothing is leased, and the job is
//! never Processing, before it was submitted.

use std::collections::BTreeMap;

use chrono::Duration;
use proptest::prelude::*;

use crate::catalogue::ParamValue;
use crate::ids::{ExecutorId, LeaseId, StepId};
use crate::job::canned::{Driver, outputs_for, sample_dataset, sample_spec};
use crate::job::events::JobEvent;
use crate::job::*;
use crate::workflow::StepKind;

const STEPS: [&str; 6] = ["validate", "label", "train", "sample", "review", "publish"];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        images: u32,
    },
    Lease {
        pick: usize,
        reuse: Option<usize>,
    },
    Heartbeat {
        pick: usize,
        current: bool,
        percent: f32,
    },
    Complete {
        pick: usize,
        current: bool,
    },
    Fail {
        pick: usize,
        current: bool,
        kind: u8,
        retryable: bool,
    },
    Expire {
        pick: usize,
    },
    ExpireQueued {
        pick: usize,
    },
    Approve {
        epoch: u32,
    },
    Reject,
    Cancel,
    FailJob,
    Advance {
        secs: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..15).prop_map(|images| Op::Submit { images }),
        40 => (any::<usize>(), prop::option::weighted(0.1, any::<usize>()))
            .prop_map(|(pick, reuse)| Op::Lease { pick, reuse }),
        8 => (any::<usize>(), prop::bool::weighted(0.8), -10f32..120.0)
            .prop_map(|(pick, current, percent)| Op::Heartbeat { pick, current, percent }),
        40 => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(pick, current)| Op::Complete { pick, current }),
        8 => (any::<usize>(), prop::bool::weighted(0.85), 0u8..5, any::<bool>())
            .prop_map(|(pick, current, kind, retryable)| Op::Fail { pick, current, kind, retryable }),
        3 => any::<usize>().prop_map(|pick| Op::Expire { pick }),
        3 => any::<usize>().prop_map(|pick| Op::ExpireQueued { pick }),
        10 => (0u32..4).prop_map(|epoch| Op::Approve { epoch }),
        2 => Just(Op::Reject),
        1 => Just(Op::Cancel),
        1 => Just(Op::FailJob),
        12 => (0i64..200).prop_map(|secs| Op::Advance { secs }),
    ]
}

struct World {
    d: Driver,
    leases: Vec<LeaseId>,
    next_lease: u32,
}

impl World {
    fn pick_lease(&self, pick: usize, current: bool) -> LeaseId {
        let currents: Vec<&LeaseId> = self
            .d
            .job
            .steps()
            .values()
            .filter_map(|s| s.current_lease())
            .collect();
        if current && !currents.is_empty() {
            currents[pick % currents.len()].clone()
        } else if !self.leases.is_empty() {
            self.leases[pick % self.leases.len()].clone()
        } else {
            LeaseId::new("ghost")
        }
    }

    fn queued_step(&self, pick: usize) -> StepId {
        let queued: Vec<&StepId> = self
            .d
            .job
            .steps()
            .iter()
            .filter(|(_, s)| matches!(s.status, StepStatus::Queued { .. }))
            .map(|(id, _)| id)
            .collect();
        if queued.is_empty() {
            StepId::new(STEPS[pick % STEPS.len()])
        } else {
            queued[pick % queued.len()].clone()
        }
    }

    fn command(&mut self, op: Op) -> Option<JobCommand> {
        Some(match op {
            Op::Submit { images } => {
                let mut dataset = sample_dataset();
                dataset.image_count = images;
                JobCommand::Submit(SubmitJob { dataset })
            }
            Op::Lease { pick, reuse } => {
                let lease_id = match reuse {
                    Some(i) if !self.leases.is_empty() => {
                        self.leases[i % self.leases.len()].clone()
                    }
                    _ => {
                        self.next_lease += 1;
                        LeaseId::new(format!("l{}", self.next_lease))
                    }
                };
                JobCommand::LeaseStep(LeaseStep {
                    step_id: self.queued_step(pick),
                    lease_id,
                    executor_id: ExecutorId::new("gpu"),
                })
            }
            Op::Heartbeat {
                pick,
                current,
                percent,
            } => JobCommand::Heartbeat(Heartbeat {
                lease_id: self.pick_lease(pick, current),
                progress: StepProgress {
                    percent,
                    ..Default::default()
                },
            }),
            Op::Complete { pick, current } => {
                let lease = self.pick_lease(pick, current);
                let kind = self
                    .d
                    .job
                    .find_lease(&lease)
                    .map(|(_, rec, _)| rec.kind.clone())
                    .unwrap_or_else(|| StepKind::TRAIN.into());
                JobCommand::CompleteStep(outputs_for(&kind, lease))
            }
            Op::Fail {
                pick,
                current,
                kind,
                retryable,
            } => JobCommand::FailStep(FailStep {
                lease_id: self.pick_lease(pick, current),
                error: StepError {
                    kind: [
                        StepErrorKind::OutOfMemory,
                        StepErrorKind::InvalidInput,
                        StepErrorKind::Unavailable,
                        StepErrorKind::Cancelled,
                        StepErrorKind::Internal,
                    ][kind as usize],
                    message: "x".into(),
                    retryable,
                },
            }),
            Op::Expire { pick } => JobCommand::ExpireLease(ExpireLease {
                lease_id: self.pick_lease(pick, true),
            }),
            Op::ExpireQueued { pick } => JobCommand::ExpireQueuedStep(ExpireQueuedStep {
                step_id: self.queued_step(pick),
            }),
            Op::Approve { epoch } => JobCommand::Approve(ApproveJob {
                epoch,
                approved_by: "r".into(),
            }),
            Op::Reject => JobCommand::Reject(RejectJob {
                reason: "no".into(),
                rejected_by: "r".into(),
            }),
            Op::Cancel => JobCommand::Cancel(CancelJob {
                reason: "stop".into(),
                cancelled_by: "c".into(),
            }),
            Op::FailJob => JobCommand::Fail(FailJob {
                reason: FailureReason::ExecutorLost,
                message: "gone".into(),
            }),
            Op::Advance { secs } => {
                self.d.advance(Duration::seconds(secs));
                return None;
            }
        })
    }
}

fn check_attempt_outcomes(events: &[JobEvent]) -> Result<(), TestCaseError> {
    let mut outcomes: BTreeMap<(StepId, u32), usize> = BTreeMap::new();
    for e in events {
        let key = match e {
            JobEvent::StepCompleted(e) => (e.step_id.clone(), e.attempt),
            JobEvent::StepFailed(e) => (e.step_id.clone(), e.attempt),
            JobEvent::LeaseExpired(e) => (e.step_id.clone(), e.attempt),
            _ => continue,
        };
        let n = outcomes.entry(key.clone()).or_default();
        *n += 1;
        prop_assert!(*n <= 1, "attempt {:?} has {} terminal outcomes", key, n);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_invariants(
        ops in proptest::collection::vec(op(), 1..80),
        short_retries in any::<bool>(),
        allow_abort in any::<bool>(),
    ) {
        let mut world = World { d: Driver::new(), leases: vec![], next_lease: 0 };
        if short_retries {
            world.d.services.status.update(|s| s.max_retries = 1);
        }
        let mut spec = sample_spec();
        spec.params.insert("resolution".into(), ParamValue::Int(128));
        world.d.create_with(spec);
        let mut submitted = false;

        for op in ops {
            if !allow_abort && matches!(op, Op::Cancel | Op::FailJob | Op::Reject) {
                continue;
            }
            let Some(cmd) = world.command(op) else { continue };
            let was_terminal = world.d.job.is_terminal();
            let before = world.d.job.clone();
            match world.d.exec(cmd.clone()) {
                Ok(events) => {
                    // (b) terminal states accept nothing.
                    if was_terminal {
                        prop_assert!(events.is_empty(), "terminal job emitted {:?} for {:?}", events, cmd);
                    }
                    for e in &events {
                        if let JobEvent::StepLeased(l) = e {
                            world.leases.push(l.lease_id.clone());
                        }
                        if matches!(e, JobEvent::JobSubmitted(_)) {
                            submitted = true;
                        }
                        // (d) no lease before submission.
                        if matches!(e, JobEvent::StepLeased(_)) {
                            prop_assert!(submitted, "step leased before the job was submitted");
                        }
                    }
                }
                Err(_) => prop_assert_eq!(&world.d.job, &before, "a refused command changed the job"),
            }
            // (a) the state is the fold of the events.
            prop_assert_eq!(&replay(world.d.events.clone()), &world.d.job);
            // (d) Processing only after Submitted.
            if world.d.job.state() == Some(JobState::Processing) {
                prop_assert!(submitted);
            }
            // (c) one terminal outcome per attempt.
            check_attempt_outcomes(&world.d.events)?;
        }
    }
}
