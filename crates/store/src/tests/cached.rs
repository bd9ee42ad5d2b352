//! The command path decides retry-safe commands, and the `Submit` that
//! follows a `Create`, on the job as this process last wrote it; another
//! process writing the same job in between must never make it act on the
//! old copy: its write conflicts, and a refusal or a no-op from the copy is
//! decided again on the stored job.

use loraflow_core::ids::{ExecutorId, JobId, LeaseId, StepId};
use loraflow_core::job::canned::{outputs_for, sample_dataset, sample_spec};
use loraflow_core::job::{
    CancelJob, CreateJob, Heartbeat, JobCommand, JobEvent, LeaseStep, StepProgress, SubmitJob,
};
use loraflow_core::workflow::StepKind;

use super::support::{TestStore, meta};
use crate::Error;

fn lease(step: &str, lease: &str) -> JobCommand {
    JobCommand::LeaseStep(LeaseStep {
        step_id: StepId::new(step),
        lease_id: LeaseId::new(lease),
        executor_id: ExecutorId::new("gpu-0"),
        instance: None,
    })
}

async fn a_job_moved_on_by_another_process_is_decided_as_stored(t: &TestStore) {
    let other = t.reopen().await;
    let job = JobId::new("cached");
    let run = |c| t.store.execute(&job, c, meta());
    run(JobCommand::Create(CreateJob {
        job_id: job.clone(),
        spec: sample_spec(),
    }))
    .await
    .unwrap();
    run(JobCommand::Submit(SubmitJob {
        dataset: sample_dataset(),
    }))
    .await
    .unwrap();
    // This process leases and keeps the job in memory.
    run(lease("validate", "l1")).await.unwrap();
    let heartbeat = |l: &str| {
        JobCommand::Heartbeat(Heartbeat {
            lease_id: LeaseId::new(l),
            progress: StepProgress {
                percent: 10.0,
                ..Default::default()
            },
        })
    };
    run(heartbeat("l1")).await.expect("a live lease renews");

    // Another process completes the step behind this one's back.
    other
        .execute(
            &job,
            JobCommand::CompleteStep(outputs_for(
                &StepKind::new(StepKind::VALIDATE_DATASET),
                LeaseId::new("l1"),
            )),
            meta(),
        )
        .await
        .unwrap();

    // The copy here still holds lease l1; the stored job does not.
    let err = run(heartbeat("l1")).await.unwrap_err();
    assert!(
        matches!(err, Error::Domain(_)),
        "refused as stored: {err:?}"
    );
    // Leasing the completed step again is refused; the next one goes through.
    let again = run(lease("validate", "l2")).await;
    assert!(matches!(again, Err(Error::Domain(_))), "{again:?}");
    let next = run(lease("label", "l3")).await.unwrap();
    assert!(
        next.events
            .iter()
            .any(|e| matches!(e, JobEvent::StepLeased(l) if l.step_id.as_str() == "label"))
    );

    // One history, every sequence once, chain intact, and both processes
    // fold it to the same job.
    let history = t.store.history(&job).await.unwrap();
    let sequences: Vec<u64> = history.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=history.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        history
            .iter()
            .filter(|e| matches!(e.payload, JobEvent::StepCompleted(_)))
            .count(),
        1
    );
    t.store.verify_job(&job).await.unwrap();
    let here = t.store.load(&job).await.unwrap().unwrap();
    let there = other.load(&job).await.unwrap().unwrap();
    assert_eq!(here.sequence, there.sequence);
    assert_eq!(here.sequence, next.sequence);
    other.close().await;
}

/// A submit follows its create on the copy this process wrote; a job
/// cancelled by another process in between is not submitted from the copy.
async fn a_submit_after_another_process_cancelled_is_decided_as_stored(t: &TestStore) {
    let other = t.reopen().await;
    let create = |id: &JobId| {
        JobCommand::Create(CreateJob {
            job_id: id.clone(),
            spec: sample_spec(),
        })
    };
    let submit = || {
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        })
    };
    let plain = JobId::new("plain");
    t.store
        .execute(&plain, create(&plain), meta())
        .await
        .unwrap();
    let submitted = t.store.execute(&plain, submit(), meta()).await.unwrap();
    assert_eq!(submitted.sequence, 1 + submitted.events.len() as u64);
    assert!(matches!(submitted.events[0], JobEvent::JobSubmitted(_)));

    let job = JobId::new("cancelled-meanwhile");
    t.store.execute(&job, create(&job), meta()).await.unwrap();
    other
        .execute(
            &job,
            JobCommand::Cancel(CancelJob {
                reason: "wrong dataset".into(),
                cancelled_by: "alice".into(),
            }),
            meta(),
        )
        .await
        .unwrap();
    let err = t.store.execute(&job, submit(), meta()).await.unwrap_err();
    assert!(
        matches!(err, Error::Domain(_)),
        "refused as stored: {err:?}"
    );
    let history = t.store.history(&job).await.unwrap();
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.payload, JobEvent::JobSubmitted(_))),
        "{history:?}"
    );
    t.store.verify_job(&job).await.unwrap();
    other.close().await;
}

// Two processes need a database (a memory store is its process' own).
mod databases {
    use super::super::support::{Kind, TestStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_submit_after_another_process_cancelled_is_decided_as_stored() {
        let t = TestStore::open(Kind::Sqlite).await.unwrap();
        super::a_submit_after_another_process_cancelled_is_decided_as_stored(&t).await;
        t.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_submit_after_another_process_cancelled_is_decided_as_stored() {
        let Some(t) = TestStore::open(Kind::Postgres).await else {
            return;
        };
        super::a_submit_after_another_process_cancelled_is_decided_as_stored(&t).await;
        t.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_job_moved_on_by_another_process_is_decided_as_stored() {
        let t = TestStore::open(Kind::Sqlite).await.unwrap();
        super::a_job_moved_on_by_another_process_is_decided_as_stored(&t).await;
        t.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_job_moved_on_by_another_process_is_decided_as_stored() {
        let Some(t) = TestStore::open(Kind::Postgres).await else {
            return;
        };
        super::a_job_moved_on_by_another_process_is_decided_as_stored(&t).await;
        t.cleanup().await;
    }
}
