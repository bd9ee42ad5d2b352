//! The `job_status` row keeps what a job's creation fixes (its spec and
//! resolved parameters) in a column of its own, written once; the views'
//! updates write only the rest. A store whose rows hold everything in the
//! payload (written before the split) reads the same statuses, and its
//! migration splits them. A views runner folds onto the statuses it
//! wrote only while the checkpoint says no other runner wrote since.

use loraflow_core::ids::{JobId, LeaseId};
use loraflow_core::job::JobCommand;
use loraflow_core::job::canned::outputs_for;
use loraflow_core::views::{JobStatus, JobSummary};
use loraflow_core::workflow::StepKind;

use super::batch::{lease, submitted};
use super::support::{Kind, TestStore, meta, on_databases, run_sql};
use crate::Store;
use crate::backend::Backend;

/// Each status row's payload and fixed part, as JSON text, by job.
async fn raw_rows(store: &Store) -> Vec<(String, String, Option<String>)> {
    match &store.shared().backend {
        Backend::Sqlite(pool) => {
            sqlx::query_as("SELECT job_id, payload, fixed FROM job_status ORDER BY job_id")
                .fetch_all(pool)
                .await
                .unwrap()
        }
        Backend::Postgres(pool) => sqlx::query_as(
            "SELECT job_id, payload::text, fixed::text FROM job_status ORDER BY job_id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Backend::Memory(..) => unreachable!("a database store"),
    }
}

/// Put every row back as it was written before the split (everything in
/// the payload, no fixed part) and forget the migration that split it.
async fn unsplit(store: &Store) {
    run_sql(
        store,
        &[
            "UPDATE job_status SET payload = json_set(payload,
                 '$.spec', json_extract(fixed, '$.spec'),
                 '$.params', json_extract(fixed, '$.params')), fixed = NULL",
            "DELETE FROM schema_migrations WHERE version = 8",
        ],
        &[
            "UPDATE job_status SET payload = payload || fixed, fixed = NULL",
            "DELETE FROM schema_migrations WHERE version = 9",
        ],
    )
    .await;
}

async fn statuses(store: &Store, jobs: &[JobId]) -> Vec<JobStatus> {
    let mut out = Vec::new();
    for job in jobs {
        out.push(
            store
                .views()
                .job_status(job)
                .await
                .unwrap()
                .expect("a status"),
        );
    }
    out
}

async fn status_rows_keep_what_creation_fixed_apart(t: &TestStore) {
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(submitted(&t.store, &format!("rows-{i}")).await);
    }
    t.store.catch_up_views().await.unwrap();
    let before = statuses(&t.store, &jobs).await;
    // Split: the spec and parameters only in `fixed`.
    for (job, payload, fixed) in raw_rows(&t.store).await {
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert!(payload.get("spec").is_none(), "{job}: {payload}");
        assert!(payload.get("state").is_some(), "{job}: {payload}");
        let fixed: serde_json::Value = serde_json::from_str(&fixed.expect("fixed")).unwrap();
        assert!(fixed["spec"].is_object() && fixed["params"].is_object());
    }

    // Rows as an earlier release wrote them read the same.
    unsplit(&t.store).await;
    for (_, payload, fixed) in raw_rows(&t.store).await {
        assert!(payload.contains("\"spec\"") && fixed.is_none());
    }
    assert_eq!(statuses(&t.store, &jobs).await, before);
    // The migration splits them again, and they still read the same.
    let again = t.reopen().await;
    for (_, payload, fixed) in raw_rows(&again).await {
        assert!(!payload.contains("\"spec\"") && fixed.is_some());
    }
    assert_eq!(statuses(&again, &jobs).await, before);

    // An update after it (a lease) changes the status and keeps the spec.
    again
        .execute(&jobs[0], lease("validate", "rows-lease"), meta())
        .await
        .unwrap();
    again.catch_up_views().await.unwrap();
    let after = statuses(&again, &jobs).await;
    assert_ne!(after[0], before[0]);
    assert_eq!(after[0].spec, before[0].spec);
    assert_eq!(after[0].params, before[0].params);
    assert_eq!(after[1..], before[1..]);
    // The list reads the same rows.
    let listed = again
        .views()
        .list_jobs(&crate::JobListQuery::default())
        .await
        .unwrap();
    let mut summaries: Vec<JobSummary> = after.iter().map(JobSummary::from).collect();
    summaries.sort_by(|a, b| (b.created_at, &b.job_id).cmp(&(a.created_at, &a.job_id)));
    assert_eq!(listed.jobs, summaries);
    again.close().await;
}

/// Two processes' runners take turns on one database: each folds onto the
/// statuses it wrote only when nothing came between, and the views equal a
/// rebuild from the feed. (Folding onto its own rows after the other's
/// batch would lose the other's changes.)
async fn runners_taking_turns_keep_the_views_a_fold_of_the_feed(t: &TestStore) {
    let a = &t.store;
    let b = t.reopen().await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(submitted(a, &format!("turns-{i}")).await);
    }
    a.catch_up_views().await.unwrap();
    // B leases job 0's step and applies it: A's rows of job 0 are now old.
    b.execute(&jobs[0], lease("validate", "turns-b"), meta())
        .await
        .unwrap();
    b.catch_up_views().await.unwrap();
    // A completes that step and leases job 1's, and applies both.
    let done = outputs_for(
        &StepKind::new(StepKind::VALIDATE_DATASET),
        LeaseId::new("turns-b"),
    );
    a.execute(&jobs[0], JobCommand::CompleteStep(done), meta())
        .await
        .unwrap();
    a.execute(&jobs[1], lease("validate", "turns-a"), meta())
        .await
        .unwrap();
    a.catch_up_views().await.unwrap();
    // Then only A: it folds onto what it wrote.
    a.execute(&jobs[2], lease("validate", "turns-a2"), meta())
        .await
        .unwrap();
    a.catch_up_views().await.unwrap();
    let seen = statuses(a, &jobs).await;
    for (job, status) in jobs.iter().zip(&seen) {
        let stored = a.load(job).await.unwrap().unwrap().sequence;
        assert_eq!(status.sequence, stored, "{job}");
    }
    // A rebuild from the feed gives the same rows.
    a.rebuild_views().await.unwrap();
    assert_eq!(statuses(a, &jobs).await, seen);
    b.close().await;
}

on_databases!(
    status_rows_keep_what_creation_fixed_apart,
    runners_taking_turns_keep_the_views_a_fold_of_the_feed,
);

/// The block (page) of `job`'s status row.
async fn status_block(store: &Store, job: &JobId) -> i64 {
    let Backend::Postgres(pool) = &store.shared().backend else {
        unreachable!("a PostgreSQL store")
    };
    sqlx::query_scalar("SELECT (ctid::text::point)[0]::int8 FROM job_status WHERE job_id = $1")
        .bind(job.as_str())
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Until the views show `job` as stored. Another test's open transaction
/// on the same server holds PostgreSQL's feed horizon back for a moment, so
/// one catch-up may stop short of the last commit.
async fn views_show(store: &Store, job: &JobId) {
    let stored = store.load(job).await.unwrap().unwrap().sequence;
    for _ in 0..1000 {
        store.catch_up_views().await.unwrap();
        let seen = store.views().job_status(job).await.unwrap();
        if seen.is_some_and(|s| s.sequence == stored) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the views never showed {job} at sequence {stored}");
}

/// PostgreSQL keeps room on each status page (migration 10): a job's status
/// row, updated at each of its steps, stays on its page, however full
/// inserts made it, so the update touches no index (a heap-only tuple).
/// With pages filled to the brim, the update moves to another page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_status_update_stays_on_its_page() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    let store = &t.store;
    // New jobs until a row lands on the second page: the first is as full
    // as inserts fill it.
    let mut jobs = Vec::new();
    loop {
        assert!(jobs.len() < 200, "200 status rows on one page");
        let job = submitted(store, &format!("page-{:03}", jobs.len())).await;
        views_show(store, &job).await;
        let block = status_block(store, &job).await;
        jobs.push(job);
        if block > 0 {
            break;
        }
    }
    let first = &jobs[0];
    assert_eq!(status_block(store, first).await, 0);
    store
        .execute(first, lease("validate", "page-lease"), meta())
        .await
        .unwrap();
    views_show(store, first).await;
    assert_eq!(
        status_block(store, first).await,
        0,
        "the updated row left its page ({} rows filled it)",
        jobs.len() - 1
    );
    t.cleanup().await;
}
