//! A restarted executor: its old process's lease ends at once, named as a
//! restart, and the step is retried without backoff; its own reconnect
//! keeps its leases. Given/when/then, plus the 1.0 shapes of the events
//! whose version 1.1 added the process.

use chrono::Duration;
use cqrs_es::test::TestFramework;
use serde_json::json;

use crate::ids::{ExecutorId, InstanceId, LeaseId, StepId};
use crate::job::canned::Driver;
use crate::job::events::*;
use crate::job::step::{AttemptOutcome, ExpiryCause};
use crate::job::*;

fn process(n: u32) -> InstanceId {
    InstanceId::new(format!("process-{n}"))
}

/// Lease `step` to `gpu-0` running as `instance`.
fn lease_as(d: &mut Driver, step: &str, lease: &str, instance: Option<InstanceId>) -> LeaseId {
    d.exec(JobCommand::LeaseStep(LeaseStep {
        step_id: StepId::new(step),
        lease_id: LeaseId::new(lease),
        executor_id: ExecutorId::new("gpu-0"),
        instance,
    }))
    .expect("lease");
    LeaseId::new(lease)
}

fn restarted(lease: &LeaseId, executor: &str, instance: InstanceId) -> JobCommand {
    JobCommand::ExpireRestartedLease(ExpireRestartedLease {
        lease_id: lease.clone(),
        executor_id: ExecutorId::new(executor),
        instance,
    })
}

#[test]
fn a_lease_records_the_process_that_polled() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", Some(process(1)));
    let JobEvent::StepLeased(e) = d.events.last().unwrap() else {
        panic!("{:?}", d.events.last())
    };
    assert_eq!(e.instance, Some(process(1)));
    let (_, _, attempt) = d.job.find_lease(&lease).unwrap();
    assert_eq!(attempt.instance, Some(process(1)));
}

#[test]
fn a_new_process_ends_the_old_lease_at_once_and_the_step_is_queued_without_backoff() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", Some(process(1)));
    d.advance(Duration::seconds(5));
    let now = crate::clock::Clock::now(d.clock.as_ref());
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(restarted(&lease, "gpu-0", process(2)))
        .then_expect_events(vec![
            JobEvent::LeaseExpired(LeaseExpired {
                step_id: "validate".into(),
                attempt: 1,
                lease_id: lease.clone(),
                executor_id: "gpu-0".into(),
                cause: ExpiryCause::ExecutorRestarted,
                restarted_as: Some(process(2)),
                expired_at: now,
            }),
            JobEvent::StepRetried(StepRetried {
                step_id: "validate".into(),
                next_attempt: 2,
                max_attempts: 3,
                backoff_ms: 0,
                adjustments: vec![],
            }),
            JobEvent::StepQueued(StepQueued {
                step_id: "validate".into(),
                kind: "validate_dataset".into(),
                attempt: 2,
                tenant: "acme".into(),
                priority: 0,
                requires: d.job.workflow().unwrap().steps[0].requires.clone(),
                queued_at: now,
                not_before: now,
            }),
        ]);
    d.exec(restarted(&lease, "gpu-0", process(2))).unwrap();
    let (_, _, attempt) = d.job.find_lease(&lease).unwrap();
    assert_eq!(
        attempt.outcome,
        Some(AttemptOutcome::Expired(ExpiryCause::ExecutorRestarted))
    );
    // The new process may take the step at once; the old lease is stale.
    lease_as(&mut d, "validate", "l2", Some(process(2)));
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress::default(),
        }))
        .then_expect_error(Error::StaleLease {
            lease_id: lease,
            step: "validate".into(),
        });
}

#[test]
fn a_reconnect_of_the_same_process_keeps_its_lease() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", Some(process(1)));
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(restarted(&lease, "gpu-0", process(1)))
        .then_expect_error(Error::LeaseHolderLive {
            lease_id: lease,
            executor_id: "gpu-0".into(),
            instance: Some(process(1)),
        });
}

#[test]
fn another_executors_restart_leaves_the_lease_alone() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", Some(process(1)));
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(restarted(&lease, "gpu-7", process(2)))
        .then_expect_error(Error::LeaseHolderLive {
            lease_id: lease,
            executor_id: "gpu-0".into(),
            instance: Some(process(1)),
        });
}

#[test]
fn a_lease_of_a_process_that_named_none_ends_when_a_named_one_registers() {
    // A worker that sent no instance id cannot be the process that sends one now.
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", None);
    let events = d.exec(restarted(&lease, "gpu-0", process(1))).unwrap();
    assert!(matches!(
        &events[0],
        JobEvent::LeaseExpired(e) if e.cause == ExpiryCause::ExecutorRestarted
    ));
}

#[test]
fn a_lease_that_ended_is_not_ended_again() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = lease_as(&mut d, "validate", "l1", Some(process(1)));
    d.exec(restarted(&lease, "gpu-0", process(2))).unwrap();
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(restarted(&lease, "gpu-0", process(3)))
        .then_expect_error(Error::StaleLease {
            lease_id: lease,
            step: "validate".into(),
        });
}

#[test]
fn restarts_count_as_attempts_and_exhaust_the_retries() {
    // A step that kills its worker every time must not loop forever.
    let mut d = Driver::new();
    d.create().submit();
    for n in 1..=3 {
        let lease = lease_as(&mut d, "validate", &format!("l{n}"), Some(process(n)));
        d.exec(restarted(&lease, "gpu-0", process(n + 1))).unwrap();
    }
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::RetriesExhausted);
    assert!(
        failure.message.contains("restarted") && failure.message.contains("attempt 3 of 3"),
        "{}",
        failure.message
    );
}

#[test]
fn a_restart_is_refused_outside_running_states() {
    let mut d = Driver::new();
    d.create();
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(d.events.clone())
        .when(restarted(&LeaseId::new("l1"), "gpu-0", process(2)))
        .then_expect_error(Error::IllegalTransition {
            command: "expire_restarted_lease",
            state: JobState::Pending,
        });
}

#[test]
fn step_leased_and_lease_expired_1_0_load_without_a_process() {
    let leased: JobEvent = serde_json::from_value(json!({
        "StepLeased": {
            "step_id": "validate", "kind": "validate_dataset", "attempt": 1,
            "lease_id": "l1", "executor_id": "gpu-0",
            "leased_at": "2025-03-01T10:00:00Z",
            "deadline": "2025-03-01T10:02:00Z",
            "close_by": "2025-03-01T11:00:00Z"
        }
    }))
    .expect("a 1.0 StepLeased loads");
    let JobEvent::StepLeased(l) = leased else {
        panic!()
    };
    assert_eq!(l.instance, None);
    let expired: JobEvent = serde_json::from_value(json!({
        "LeaseExpired": {
            "step_id": "validate", "attempt": 1, "lease_id": "l1",
            "executor_id": "gpu-0", "cause": "HeartbeatTimeout",
            "expired_at": "2025-03-01T10:02:00Z"
        }
    }))
    .expect("a 1.0 LeaseExpired loads");
    let JobEvent::LeaseExpired(e) = expired else {
        panic!()
    };
    assert_eq!(e.restarted_as, None);
    // And the current versions say that they may carry the new fields.
    use cqrs_es::DomainEvent;
    assert_eq!(JobEvent::StepLeased(l).event_version(), "1.1.0");
    assert_eq!(JobEvent::LeaseExpired(e).event_version(), "1.1.0");
}
