//! Property tests: random command sequences against the aggregate.
//!
//! After every command: (a) the events emitted so far, each written to JSON
//! and read back through the upcasters as a store loads them, fold from
//! `Default` into the state the aggregate reached; (b) a terminal job emits
//! nothing; (c) no step attempt has more than one terminal outcome; (d)
//! nothing is leased, and the job is never Processing, before it was
//! submitted; and the job is over exactly when its last event ends it
//! (`JobEvent::ends_job`). The generator leans towards the next useful command, and the
//! test checks that the runs reach review, approval and publication, so the
//! properties hold over the whole life cycle, not just its start.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Duration;
use cqrs_es::EventEnvelope;
use cqrs_es::persist::SerializedEvent;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::catalogue::ParamValue;
use crate::ids::{ExecutorId, InstanceId, LeaseId, StepId};
use crate::job::canned::{Driver, outputs_for, sample_dataset, sample_spec};
use crate::job::events::JobEvent;
use crate::job::upcast::upcasters;
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
    /// The executor registers again: from a new process, or (`same`) from
    /// the one that holds the leases, which must keep them.
    Restart {
        pick: usize,
        same: bool,
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
    /// Whatever moves the job on: submit, lease a queued step (waiting out
    /// its backoff), complete the running one, approve a produced epoch.
    Next {
        pick: usize,
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
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, same)| Op::Restart { pick, same }),
        3 => any::<usize>().prop_map(|pick| Op::ExpireQueued { pick }),
        10 => (0u32..4).prop_map(|epoch| Op::Approve { epoch }),
        2 => Just(Op::Reject),
        1 => Just(Op::Cancel),
        1 => Just(Op::FailJob),
        12 => (0i64..200).prop_map(|secs| Op::Advance { secs }),
        60 => any::<usize>().prop_map(|pick| Op::Next { pick }),
    ]
}

struct World {
    d: Driver,
    leases: Vec<LeaseId>,
    next_lease: u32,
    /// The executor's current process, `p{process}`.
    process: u32,
}

impl World {
    fn instance(&self) -> Option<InstanceId> {
        Some(InstanceId::new(format!("p{}", self.process)))
    }

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
                    instance: self.instance(),
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
            Op::Restart { pick, same } => {
                if !same {
                    self.process += 1;
                }
                JobCommand::ExpireRestartedLease(ExpireRestartedLease {
                    lease_id: self.pick_lease(pick, true),
                    executor_id: ExecutorId::new("gpu"),
                    instance: self.instance().expect("a process"),
                })
            }
            Op::ExpireQueued { pick } => JobCommand::ExpireQueuedStep(ExpireQueuedStep {
                step_id: self.queued_step(pick),
                unservable: None,
            }),
            Op::Approve { epoch } => JobCommand::Approve(ApproveJob {
                epoch,
                step: None,
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
            Op::Next { pick } => return self.next(pick),
        })
    }

    /// The command that moves the job on, if any.
    fn next(&mut self, pick: usize) -> Option<JobCommand> {
        let job = &self.d.job;
        match job.state()? {
            JobState::Pending => {
                return Some(JobCommand::Submit(SubmitJob {
                    dataset: sample_dataset(),
                }));
            }
            JobState::InReview => {
                let epochs: Vec<u32> = job
                    .epochs()
                    .values()
                    .filter(|e| e.lora.is_some())
                    .map(|e| e.epoch)
                    .collect();
                return Some(JobCommand::Approve(ApproveJob {
                    epoch: *epochs.get(pick % epochs.len().max(1))?,
                    step: None,
                    approved_by: "r".into(),
                }));
            }
            s if s.is_terminal() => return None,
            _ => {}
        }
        if let Some((lease, kind)) = job
            .steps()
            .values()
            .find_map(|s| s.current_lease().map(|l| (l.clone(), s.kind.clone())))
        {
            return Some(JobCommand::CompleteStep(outputs_for(&kind, lease)));
        }
        let (step, not_before) = job.steps().iter().find_map(|(id, s)| match s.status {
            StepStatus::Queued { not_before, .. } => Some((id.clone(), not_before)),
            _ => None,
        })?;
        let now = crate::clock::Clock::now(self.d.clock.as_ref());
        if now < not_before {
            self.d.advance(not_before - now);
        }
        self.next_lease += 1;
        Some(JobCommand::LeaseStep(LeaseStep {
            step_id: step,
            lease_id: LeaseId::new(format!("l{}", self.next_lease)),
            executor_id: ExecutorId::new("gpu"),
            instance: self.instance(),
        }))
    }
}

/// The events as a store hands them back: each written to JSON text with its
/// type and version, read back, upcast, and deserialised.
fn through_the_store(first_sequence: usize, events: &[JobEvent]) -> Vec<JobEvent> {
    let upcasters = upcasters();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let envelope = EventEnvelope::<TrainingJob> {
                aggregate_id: "job-1".into(),
                sequence: first_sequence + i,
                payload: e.clone(),
                metadata: HashMap::new(),
            };
            let mut stored = SerializedEvent::try_from(&envelope).expect("an event serialises");
            let text = serde_json::to_string(&stored.payload).expect("a payload is JSON");
            stored.payload = serde_json::from_str(&text).expect("its JSON text parses");
            for u in &upcasters {
                if u.can_upcast(&stored.event_type, &stored.event_version) {
                    stored = u.upcast(stored);
                }
            }
            EventEnvelope::<TrainingJob>::try_from(stored)
                .unwrap_or_else(|err| panic!("{} does not load back: {err}", e.name()))
                .payload
        })
        .collect()
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

fn case() -> impl Strategy<Value = (Vec<Op>, bool, bool)> {
    (
        proptest::collection::vec(op(), 1..120),
        any::<bool>(),
        any::<bool>(),
    )
}

/// Run one case; returns the states the job went through.
fn run_case(
    (ops, short_retries, allow_abort): (Vec<Op>, bool, bool),
) -> Result<BTreeSet<JobState>, TestCaseError> {
    let mut world = World {
        d: Driver::new(),
        leases: vec![],
        next_lease: 0,
        process: 0,
    };
    if short_retries {
        world.d.services.status.update(|s| s.max_retries = 1);
    }
    let mut spec = sample_spec();
    spec.params
        .insert("resolution".into(), ParamValue::Int(128));
    world.d.create_with(spec);
    let mut submitted = false;
    let mut seen = BTreeSet::from([JobState::Pending]);
    // The log as a store would load it, kept up to date event by event.
    let mut loaded = through_the_store(1, &world.d.events);

    for op in ops {
        if !allow_abort && matches!(op, Op::Cancel | Op::FailJob | Op::Reject) {
            continue;
        }
        let Some(cmd) = world.command(op) else {
            continue;
        };
        let was_terminal = world.d.job.is_terminal();
        let before = world.d.job.clone();
        match world.d.exec(cmd.clone()) {
            Ok(events) => {
                // (b) terminal states accept nothing.
                if was_terminal {
                    prop_assert!(
                        events.is_empty(),
                        "terminal job emitted {:?} for {:?}",
                        events,
                        cmd
                    );
                }
                // (e) a restart ends only another process's lease, and
                // its retry waits no backoff.
                if let JobCommand::ExpireRestartedLease(c) = &cmd {
                    let (_, _, attempt) = before.find_lease(&c.lease_id).expect("a known lease");
                    prop_assert_ne!(attempt.instance.as_ref(), Some(&c.instance));
                }
                for pair in events.windows(2) {
                    if let [JobEvent::LeaseExpired(x), JobEvent::StepRetried(r)] = pair
                        && x.cause == step::ExpiryCause::ExecutorRestarted
                    {
                        prop_assert_eq!(r.backoff_ms, 0, "a restart's retry waits no backoff");
                    }
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
        // The event that ends a job is its last, and only such an event ends it.
        prop_assert_eq!(
            world.d.job.is_terminal(),
            world.d.events.last().is_some_and(JobEvent::ends_job)
        );
        // (a) the state is the fold of the events as a store returns them.
        let new = &world.d.events[loaded.len()..];
        loaded.extend(through_the_store(loaded.len() + 1, new));
        prop_assert_eq!(&replay(loaded.clone()), &world.d.job);
        let state = world.d.job.state().expect("the job exists");
        seen.insert(state);
        // (d) Processing only after Submitted.
        if state == JobState::Processing {
            prop_assert!(submitted);
        }
        // (c) one terminal outcome per attempt.
        check_attempt_outcomes(&world.d.events)?;
    }
    Ok(seen)
}

const CASES: u32 = 300;

#[test]
fn random_command_sequences_keep_the_invariants() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        source_file: Some(file!()),
        ..Config::default()
    });
    // How many cases went through each state (shrinking runs included, but
    // they only happen when a property already failed).
    let reached: RefCell<BTreeMap<JobState, u32>> = RefCell::default();
    let result = runner.run(&case(), |c| {
        for s in run_case(c)? {
            *reached.borrow_mut().entry(s).or_default() += 1;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let reached = reached.into_inner();
    eprintln!("cases per state reached, of {CASES}: {reached:?}");
    // Typical shares are far above these floors; a generator that stopped
    // reaching the late states would cover only the start of the life cycle.
    for (state, floor) in [
        (JobState::Processing, 0.5),
        (JobState::InReview, 0.2),
        (JobState::Approved, 0.1),
        (JobState::Published, 0.05),
        (JobState::Failed, 0.05),
    ] {
        let n = reached.get(&state).copied().unwrap_or(0);
        assert!(
            n as f64 >= floor * CASES as f64,
            "only {n} of {CASES} cases reached {state}: {reached:?}"
        );
    }
}
