//! `Store::execute_many`: several jobs' commands decided as `execute` would
//! decide each, written together; every invariant of one-by-one commits
//! kept (one live lease per step, the hash chain, the gap-free feed, the
//! open-jobs index). `Store::execute_after`: the same behind a first
//! command that gates the rest.

use loraflow_core::ids::{ExecutorId, JobId, LeaseId, StepId};
use loraflow_core::job::canned::{outputs_for, sample_dataset, sample_spec};
use loraflow_core::job::{CreateJob, JobCommand, JobEvent, LeaseStep, SubmitJob};
use loraflow_core::workflow::StepKind;

use super::support::{Kind, TestStore, meta, on_every_backend, readable};
use crate::{Error, FeedFilter, Position, Store};

pub(super) fn lease(step: &str, lease: &str) -> JobCommand {
    JobCommand::LeaseStep(LeaseStep {
        step_id: StepId::new(step),
        lease_id: LeaseId::new(lease),
        executor_id: ExecutorId::new("gpu-0"),
        instance: None,
    })
}

/// A submitted job: its `validate` step is queued.
pub(super) async fn submitted(store: &Store, id: &str) -> JobId {
    let job = JobId::new(id);
    for c in [
        JobCommand::Create(CreateJob {
            job_id: job.clone(),
            spec: sample_spec(),
        }),
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }),
    ] {
        store.execute(&job, c, meta()).await.unwrap();
    }
    job
}

/// Lease and complete `validate`: `label` is queued, at a later sequence.
async fn validated(store: &Store, job: &JobId) {
    let l = LeaseId::new(format!("{job}-v"));
    store
        .execute(job, lease("validate", l.as_str()), meta())
        .await
        .unwrap();
    let done = outputs_for(&StepKind::new(StepKind::VALIDATE_DATASET), l);
    store
        .execute(job, JobCommand::CompleteStep(done), meta())
        .await
        .unwrap();
}

/// `n` submitted jobs `{prefix}-{i}`, every other one a stage further (its
/// lease falls on another sequence), each with the step it has queued.
async fn staged(store: &Store, prefix: &str, n: usize) -> Vec<(JobId, &'static str)> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let job = submitted(store, &format!("{prefix}-{i}")).await;
        let step = if i % 2 == 1 {
            validated(store, &job).await;
            "label"
        } else {
            "validate"
        };
        jobs.push((job, step));
    }
    jobs
}

pub(super) fn leases_in(events: &[JobEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepLeased(l) => Some(l.lease_id.to_string()),
            _ => None,
        })
        .collect()
}

/// The lease ids in `job`'s stored history, in order.
pub(super) async fn history_leases(store: &Store, job: &JobId) -> Vec<String> {
    let h: Vec<JobEvent> = store
        .history(job)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    leases_in(&h)
}

/// The feed's head once everything written to `jobs` so far is readable:
/// on PostgreSQL the feed's horizon can trail a commit while any other
/// transaction of the cluster is open, and a read from this head must
/// start after these.
pub(super) async fn head_after(store: &Store, jobs: &[JobId]) -> Position {
    let mut written = 0;
    for job in jobs {
        let h = store.history(job).await.unwrap();
        written = written.max(h.last().expect("written").position);
    }
    readable(store, written).await;
    store.feed().head().await.unwrap()
}

async fn leases_of_several_jobs_are_written_together_and_each_answered(t: &TestStore) {
    let store = &t.store;
    let mut staged = staged(store, "batch", 6).await;
    // A job this process has not written (another process made it; a
    // memory store is its process' own, so there a job dropped from the
    // cache): read as stored.
    let foreign = if t.kind == Kind::Memory {
        let job = submitted(store, "batch-foreign").await;
        store.shared().cache_job(&job, None);
        job
    } else {
        let other = t.reopen().await;
        let job = submitted(&other, "batch-foreign").await;
        other.close().await;
        job
    };
    staged.push((foreign, "validate"));
    let jobs: Vec<JobId> = staged.iter().map(|(j, _)| j.clone()).collect();
    let before = head_after(store, &jobs).await;

    let mut commands: Vec<(JobId, JobCommand)> = staged
        .iter()
        .map(|(j, step)| (j.clone(), lease(step, &format!("{j}-b"))))
        .collect();
    // A second command on one job runs alone, after the batch: the step
    // is leased by then, so it is refused.
    commands.push((jobs[0].clone(), lease("validate", "again")));
    let answers = store.execute_many(commands, meta()).await;
    assert_eq!(answers.len(), jobs.len() + 1);
    let mut positions = Vec::new();
    for (job, a) in jobs.iter().zip(&answers) {
        let c = a.as_ref().unwrap_or_else(|e| panic!("{job}: {e}"));
        assert_eq!(leases_in(&c.events), [format!("{job}-b")]);
        positions.push(c.position.expect("written"));
    }
    assert!(
        matches!(answers.last().unwrap(), Err(Error::Domain(_))),
        "{:?}",
        answers.last()
    );
    // On PostgreSQL a position is the transaction id above the row's place
    // in it: the leases went in one transaction, though the foreign job's
    // lease has another sequence than the rest.
    if t.kind == Kind::Postgres {
        let transactions: std::collections::BTreeSet<u64> =
            positions.iter().map(|p| p >> 20).collect();
        assert_eq!(transactions.len(), 1, "{positions:?}");
    }

    // Every job's chain and head verify; each holds one live lease.
    for job in &jobs {
        store.verify_job(job).await.unwrap();
        let h = store.history(job).await.unwrap();
        let payloads: Vec<JobEvent> = h.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(leases_in(&payloads).last(), Some(&format!("{job}-b")));
        let sequences: Vec<u64> = h.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=h.len() as u64).collect::<Vec<_>>());
    }
    // The feed has each new event once, in order, and the positions the
    // answers gave.
    readable(store, *positions.iter().max().unwrap()).await;
    let fed = store
        .feed()
        .read(before, 1000, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(fed.len(), jobs.len(), "one StepLeased per job: {fed:?}");
    assert!(fed.windows(2).all(|w| w[0].position < w[1].position));
    let mut fed_positions: Vec<u64> = fed.iter().map(|e| e.position).collect();
    fed_positions.sort_unstable();
    positions.sort_unstable();
    assert_eq!(fed_positions, positions);
    // The jobs are in flight: the open-jobs index has them all.
    let (_, in_flight) = store.feed().in_flight().await.unwrap();
    for job in &jobs {
        assert!(
            in_flight.iter().any(|e| &e.job_id == job),
            "{job} in flight"
        );
    }
}

/// Another process leased a step behind this one's back: the batch's
/// lease of it conflicts, is decided again on the stored job and refused;
/// the other leases of the batch are written. One lease, never two.
async fn a_step_leased_elsewhere_is_refused_and_the_rest_written(t: &TestStore) {
    let a = submitted(&t.store, "race-a").await;
    let b = submitted(&t.store, "race-b").await;
    let other = t.reopen().await;
    other
        .execute(&a, lease("validate", "there"), meta())
        .await
        .unwrap();
    let answers = t
        .store
        .execute_many(
            vec![
                (a.clone(), lease("validate", "here-a")),
                (b.clone(), lease("validate", "here-b")),
            ],
            meta(),
        )
        .await;
    assert!(
        matches!(answers[0], Err(Error::Domain(_))),
        "{:?}",
        answers[0]
    );
    assert_eq!(leases_in(&answers[1].as_ref().unwrap().events), ["here-b"]);
    assert_eq!(
        history_leases(&t.store, &a).await,
        ["there"],
        "one lease of a's step"
    );
    t.store.verify_job(&a).await.unwrap();
    t.store.verify_job(&b).await.unwrap();
    other.close().await;
}

/// `execute_after`: a completion gates the leases that go with it. A
/// refused completion writes nothing and runs none of them; a repeat that
/// writes nothing runs none; an accepted one is written with them, and
/// each is answered as `execute` would answer it.
async fn leases_written_after_a_completion_go_only_with_it(t: &TestStore) {
    let store = &t.store;
    let done = submitted(store, "gate-done").await;
    let lease_id = LeaseId::new("gate-done-v");
    store
        .execute(&done, lease("validate", lease_id.as_str()), meta())
        .await
        .unwrap();
    // Jobs at other sequences than the completion's, and one at the same.
    let staged = staged(store, "gate", 4).await;
    let others: Vec<JobId> = staged.iter().map(|(j, _)| j.clone()).collect();
    let leases = |tag: &str| -> Vec<(JobId, JobCommand)> {
        staged
            .iter()
            .map(|(j, step)| (j.clone(), lease(step, &format!("{j}-{tag}"))))
            .collect()
    };
    let sequences = || async {
        let mut out = Vec::new();
        for j in &others {
            out.push(store.history(j).await.unwrap().len());
        }
        out
    };
    let before = sequences().await;

    // A completion of a lease the job never granted: refused, nothing run.
    let stranger = outputs_for(
        &StepKind::new(StepKind::VALIDATE_DATASET),
        LeaseId::new("never-granted"),
    );
    let refused = store
        .execute_after(
            (done.clone(), JobCommand::CompleteStep(stranger)),
            leases("refused"),
            meta(),
        )
        .await;
    assert!(
        matches!(refused.first, Err(Error::Domain(_))),
        "{:?}",
        refused.first
    );
    assert!(refused.then.is_none());
    assert_eq!(sequences().await, before, "no lease written");

    // The real completion: written, and every lease with it.
    let completion = outputs_for(&StepKind::new(StepKind::VALIDATE_DATASET), lease_id);
    let after = store
        .execute_after(
            (done.clone(), JobCommand::CompleteStep(completion.clone())),
            leases("with"),
            meta(),
        )
        .await;
    let first = after.first.expect("the completion is written");
    assert!(
        first
            .events
            .iter()
            .any(|e| matches!(e, JobEvent::StepCompleted(_)))
    );
    let then = after.then.expect("written with the completion");
    assert_eq!(then.len(), others.len());
    for (job, a) in others.iter().zip(&then) {
        let c = a.as_ref().unwrap_or_else(|e| panic!("{job}: {e}"));
        assert_eq!(leases_in(&c.events), [format!("{job}-with")]);
    }
    let mut written = first.position.unwrap();
    for (job, n) in others.iter().zip(before) {
        let h = store.history(job).await.unwrap();
        assert_eq!(h.len(), n + 1, "{job}: one StepLeased more");
        written = written.max(h.last().unwrap().position);
        store.verify_job(job).await.unwrap();
    }
    store.verify_job(&done).await.unwrap();
    readable(store, written).await;

    // The completion again: a repeat writes nothing, so nothing is run.
    let repeat = store
        .execute_after(
            (done.clone(), JobCommand::CompleteStep(completion)),
            vec![(others[0].clone(), lease("label", "repeat"))],
            meta(),
        )
        .await;
    assert_eq!(repeat.first.unwrap().position, None);
    assert!(repeat.then.is_none());
}

on_every_backend!(
    leases_of_several_jobs_are_written_together_and_each_answered,
    leases_written_after_a_completion_go_only_with_it,
);

// Two processes need a database (a memory store is its process' own).
mod databases {
    use super::super::support::Kind;
    use super::TestStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_step_leased_elsewhere_is_refused_and_the_rest_written() {
        let t = TestStore::open(Kind::Sqlite).await.unwrap();
        super::a_step_leased_elsewhere_is_refused_and_the_rest_written(&t).await;
        t.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_step_leased_elsewhere_is_refused_and_the_rest_written() {
        let Some(t) = TestStore::open(Kind::Postgres).await else {
            return;
        };
        super::a_step_leased_elsewhere_is_refused_and_the_rest_written(&t).await;
        t.cleanup().await;
    }
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // lists of one group
fn postgres_writes_a_batch_in_one_transaction_up_to_its_limit() {
    use crate::backend::postgres::{MAX_TX_EVENTS, transaction_groups};
    assert_eq!(
        transaction_groups(&[]),
        Vec::<std::ops::Range<usize>>::new()
    );
    assert_eq!(transaction_groups(&[1, 1, 2, 1, 1]), [0..5]);
    assert_eq!(transaction_groups(&[MAX_TX_EVENTS]), [0..1]);
    assert_eq!(
        transaction_groups(&[MAX_TX_EVENTS - 1, 1, 1, MAX_TX_EVENTS, 2]),
        [0..2, 2..3, 3..4, 4..5]
    );
}
