//! Group commit (`crate::group`): commits that wait while the store writes
//! go together in its next transaction, and each keeps the answer it would
//! have had alone: a conflict in the shared transaction fails only the
//! commit at fault, two commits of one job never share one, and a caller
//! that stops waiting does not stop its write.

use std::time::Duration;

use loraflow_core::ids::JobId;
use loraflow_core::job::JobCommand;

use super::batch::{head_after, history_leases, lease, leases_in, submitted};
use super::support::{Kind, TestStore, meta, on_every_backend, readable};
use crate::{Committed, Error, FeedFilter, Result, Store};

/// Wait until `n` commits wait for the writer.
async fn waiting(store: &Store, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.shared().repo.group().waiting() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} commits waiting, never {n}",
            store.shared().repo.group().waiting()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `store.execute` on a task of its own.
fn spawn_execute(
    store: &Store,
    job: JobId,
    command: JobCommand,
) -> tokio::task::JoinHandle<Result<Committed>> {
    let store = store.clone();
    tokio::spawn(async move { store.execute(&job, command, meta()).await })
}

/// Run `commands` at once while the writer is held, once all of them wait;
/// their answers in order.
async fn while_held(store: &Store, commands: Vec<(JobId, JobCommand)>) -> Vec<Result<Committed>> {
    let held = store.shared().repo.group().hold().await;
    let n = commands.len();
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|(job, command)| spawn_execute(store, job, command))
        .collect();
    waiting(store, n).await;
    drop(held);
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("the command's task"));
    }
    answers
}

async fn commits_that_wait_share_one_transaction(t: &TestStore) {
    let store = &t.store;
    let mut jobs = Vec::new();
    for i in 0..6 {
        jobs.push(submitted(store, &format!("group-{i}")).await);
    }
    let sizes = store.shared().repo.group().sizes();
    let (count, sum) = (sizes.get_sample_count(), sizes.get_sample_sum());
    let before = head_after(store, &jobs).await;

    let commands = jobs
        .iter()
        .map(|j| (j.clone(), lease("validate", &format!("{j}-g"))))
        .collect();
    let answers = while_held(store, commands).await;
    let mut positions = Vec::new();
    for (job, a) in jobs.iter().zip(&answers) {
        let c = a.as_ref().unwrap_or_else(|e| panic!("{job}: {e}"));
        assert_eq!(leases_in(&c.events), [format!("{job}-g")]);
        positions.push(c.position.expect("written"));
    }
    // One transaction of six commits on the databases; the in-process log
    // writes each alone.
    let (transactions, commits) = (
        sizes.get_sample_count() - count,
        sizes.get_sample_sum() - sum,
    );
    assert_eq!(commits, 6.0);
    let expected = if t.kind == Kind::Memory { 6 } else { 1 };
    assert_eq!(transactions, expected, "transactions written");
    if t.kind == Kind::Postgres {
        // A position is the transaction id above the row's place in it.
        let ids: std::collections::BTreeSet<u64> = positions.iter().map(|p| p >> 20).collect();
        assert_eq!(ids.len(), 1, "{positions:?}");
    }
    // Each job's chain verifies and holds its one lease; the feed has each
    // lease once, at the position its answer gave.
    for job in &jobs {
        store.verify_job(job).await.unwrap();
        assert_eq!(history_leases(store, job).await, [format!("{job}-g")]);
    }
    readable(store, *positions.iter().max().unwrap()).await;
    let mut fed: Vec<u64> = store
        .feed()
        .read(before, 1000, &FeedFilter::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    fed.sort_unstable();
    positions.sort_unstable();
    assert_eq!(fed, positions);
}

/// In one group: a commit whose sequence another writer took (decided on
/// a job this process holds as it was before), and two commits of one
/// job. The shared transaction fails; each commit is written again on its
/// own; the one at fault is decided again on the stored job and refused,
/// and of the two on one job, one is written and the other refused. The
/// others are written, each step leased once.
async fn a_conflict_fails_only_the_commit_at_fault(t: &TestStore) {
    let store = &t.store;
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(submitted(store, &format!("fault-{i}")).await);
    }
    // `taken`'s step is leased behind the cache's back: this process still
    // holds the job as it was.
    let taken = submitted(store, "fault-taken").await;
    let stale = store.shared().cached_job(&taken);
    assert!(stale.is_some(), "the job as last written");
    store
        .execute(&taken, lease("validate", "there"), meta())
        .await
        .unwrap();
    store.shared().cache_job(&taken, stale);

    let mut commands: Vec<(JobId, JobCommand)> = jobs
        .iter()
        .map(|j| (j.clone(), lease("validate", &format!("{j}-f"))))
        .collect();
    commands.push((taken.clone(), lease("validate", "here")));
    commands.push((jobs[0].clone(), lease("validate", "twice")));
    let answers = while_held(store, commands).await;

    for (job, a) in jobs.iter().zip(&answers).skip(1) {
        let c = a.as_ref().unwrap_or_else(|e| panic!("{job}: {e}"));
        assert_eq!(leases_in(&c.events), [format!("{job}-f")]);
    }
    assert!(
        matches!(answers[4], Err(Error::Domain(_))),
        "{:?}",
        answers[4]
    );
    assert_eq!(history_leases(store, &taken).await, ["there"]);
    // jobs[0]: one of its two leases written, the other refused.
    let (first, second) = (&answers[0], &answers[5]);
    assert!(
        first.is_ok() != second.is_ok(),
        "one of two: {first:?} {second:?}"
    );
    let refused = if first.is_ok() { second } else { first };
    assert!(matches!(refused, Err(Error::Domain(_))), "{refused:?}");
    let won = if first.is_ok() {
        format!("{}-f", jobs[0])
    } else {
        "twice".to_owned()
    };
    assert_eq!(history_leases(store, &jobs[0]).await, [won]);
    for job in jobs.iter().chain([&taken]) {
        store.verify_job(job).await.unwrap();
    }
}

/// A caller that stops waiting (its future dropped, as a gRPC call whose
/// client went away) does not stop its write, nor the writes that share
/// its transaction.
async fn a_caller_that_stops_waiting_leaves_its_write_done(t: &TestStore) {
    let store = &t.store;
    let gone = submitted(store, "gone").await;
    let stays = submitted(store, "stays").await;
    let held = store.shared().repo.group().hold().await;
    let dropped = spawn_execute(store, gone.clone(), lease("validate", "gone-1"));
    waiting(store, 1).await;
    let kept = spawn_execute(store, stays.clone(), lease("validate", "stays-1"));
    waiting(store, 2).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    drop(held);
    kept.await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while history_leases(store, &gone).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped caller's lease was never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(history_leases(store, &gone).await, ["gone-1"]);
    // The job is read again for the next command (its cached copy is
    // older than the store's): refused, as the step is leased.
    let again = store
        .execute(&gone, lease("validate", "gone-2"), meta())
        .await;
    assert!(matches!(again, Err(Error::Domain(_))), "{again:?}");
    store.verify_job(&gone).await.unwrap();
}

on_every_backend!(
    commits_that_wait_share_one_transaction,
    a_conflict_fails_only_the_commit_at_fault,
    a_caller_that_stops_waiting_leaves_its_write_done,
);
