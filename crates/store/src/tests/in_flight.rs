//! A reader started from the open-jobs index ([`Feed::in_flight`]) folds to
//! the same scheduler state as a fold of the whole feed from position 0,
//! after finished and unfinished jobs, after a restart, and after the index
//! is rebuilt by its migration from the events alone.

use std::sync::Arc;

use loraflow_core::catalogue::Catalogue;
use loraflow_core::ids::JobId;
use loraflow_core::job::canned::Driver;
use loraflow_core::job::{CancelJob, JobCommand, JobEvent, RejectJob};
use loraflow_core::schedule::SchedulerState;

use super::support::{Kind, TestStore, driver, meta, on_every_backend, readable, run_sql};
use crate::backend::ENDING_EVENTS;
use crate::{FeedFilter, Store};

/// Histories by the state they leave the job in; `true` for a job that ended.
fn histories() -> Vec<(String, Vec<JobEvent>, bool)> {
    let mut out = Vec::new();
    let mut add = |name: &str, d: Driver, ended: bool| {
        // The driver numbers leases `lease-1`, `lease-2` ... in every job;
        // the engine's are UUIDs. Give each job its own.
        let events = d
            .events
            .iter()
            .map(|e| {
                let json = serde_json::to_string(e)
                    .unwrap()
                    .replace("\"lease-", &format!("\"{name}-lease-"));
                serde_json::from_str(&json).unwrap()
            })
            .collect();
        out.push((name.to_owned(), events, ended));
    };
    add(
        "created",
        {
            let mut d = driver("created");
            d.create();
            d
        },
        false,
    );
    add(
        "submitted",
        {
            let mut d = driver("submitted");
            d.create().submit();
            d
        },
        false,
    );
    add(
        "processing",
        {
            let mut d = driver("processing");
            d.create().submit().run("validate");
            d.lease("label");
            d
        },
        false,
    );
    add(
        "in-review",
        {
            let mut d = driver("in-review");
            d.run_to_review();
            d
        },
        false,
    );
    add(
        "approved",
        {
            let mut d = driver("approved");
            d.run_to_review().approve(2);
            d
        },
        false,
    );
    add(
        "published",
        {
            let mut d = driver("published");
            d.run_to_review().approve(2).run("publish");
            d
        },
        true,
    );
    add(
        "rejected",
        {
            let mut d = driver("rejected");
            d.run_to_review();
            d.exec(JobCommand::Reject(RejectJob {
                reason: "blurry".into(),
                rejected_by: "reviewer".into(),
            }))
            .expect("reject");
            d
        },
        true,
    );
    add(
        "cancelled",
        {
            let mut d = driver("cancelled");
            d.create().submit().run("validate");
            d.lease("label");
            d.exec(JobCommand::Cancel(CancelJob {
                reason: "wrong dataset".into(),
                cancelled_by: "alice".into(),
            }))
            .expect("cancel");
            d
        },
        true,
    );
    out
}

/// Write every history in commits of up to three events, jobs interleaved,
/// so that jobs open in one commit and end in a later one.
async fn write_all(store: &Store) -> u64 {
    let histories = histories();
    let mut at = vec![0usize; histories.len()];
    let mut last = 0;
    while at.iter().zip(&histories).any(|(a, h)| *a < h.1.len()) {
        for (i, (name, events, _)) in histories.iter().enumerate() {
            let to = (at[i] + 3).min(events.len());
            if at[i] < to {
                let a = store
                    .append_events(
                        &JobId::new(name.as_str()),
                        at[i] as u64,
                        events[at[i]..to].to_vec(),
                        meta(),
                    )
                    .await
                    .expect("append");
                last = last.max(a.position);
                at[i] = to;
            }
        }
    }
    last
}

fn state() -> SchedulerState {
    SchedulerState::new(Arc::new(Catalogue::builtin()))
}

/// The scheduler state folded from every event since position 0.
async fn full_replay(store: &Store) -> SchedulerState {
    let mut s = state();
    let events = store
        .feed()
        .read(0, 1_000_000, &FeedFilter::all())
        .await
        .expect("read");
    for e in &events {
        s.apply(e.position, &e.job_id, &e.payload);
    }
    s
}

/// The scheduler state folded from the open jobs' events only, and the
/// jobs those events belong to.
async fn from_open_jobs(store: &Store) -> (SchedulerState, Vec<String>) {
    let (head, events) = store.feed().in_flight().await.expect("in flight");
    let mut s = state();
    let mut jobs: Vec<String> = Vec::new();
    for e in &events {
        s.apply(e.position, &e.job_id, &e.payload);
        jobs.push(e.job_id.to_string());
    }
    s.read_up_to(head);
    assert!(
        events.windows(2).all(|w| w[0].position < w[1].position),
        "in feed order"
    );
    jobs.sort();
    jobs.dedup();
    (s, jobs)
}

fn unfinished() -> Vec<String> {
    let mut v: Vec<String> = histories()
        .into_iter()
        .filter(|(_, _, ended)| !ended)
        .map(|(n, _, _)| n)
        .collect();
    v.sort();
    v
}

async fn a_start_from_the_open_jobs_equals_a_full_replay(t: &TestStore) {
    let last = write_all(&t.store).await;
    readable(&t.store, last).await;

    let full = full_replay(&t.store).await;
    let (start, jobs) = from_open_jobs(&t.store).await;
    assert_eq!(
        jobs,
        unfinished(),
        "only the unfinished jobs' events are read"
    );
    assert_eq!(start, full);
    assert_eq!(start.open_jobs(), unfinished().len());
    assert!(start.queued().count() > 0 && start.leases().count() > 0);

    // A restarted process starts the same way (a memory store dies with
    // its process).
    if t.kind != Kind::Memory {
        let reopened = t.reopen().await;
        let (again, _) = from_open_jobs(&reopened).await;
        assert_eq!(again, full);
        reopened.close().await;
    }
}

#[test]
fn the_index_names_exactly_the_jobs_without_an_ending_event() {
    for (name, events, ended) in histories() {
        for e in &events {
            assert_eq!(
                e.ends_job(),
                ENDING_EVENTS.contains(&e.name()),
                "{name}: {}",
                e.name()
            );
        }
        assert_eq!(events.iter().any(JobEvent::ends_job), ended, "{name}");
    }
}

on_every_backend!(a_start_from_the_open_jobs_equals_a_full_replay);

/// Drop the index and forget its migration, as a store written before it
/// existed; reopening runs the migration, which rebuilds it from the events.
async fn forget_the_index(t: &TestStore) {
    let sql = [
        "DROP TABLE open_jobs",
        "DELETE FROM schema_migrations WHERE version = 7",
    ];
    run_sql(&t.store, &sql, &sql).await;
}

async fn the_migration_builds_the_index_from_the_events(t: &TestStore) {
    let last = write_all(&t.store).await;
    readable(&t.store, last).await;
    let full = full_replay(&t.store).await;
    forget_the_index(t).await;
    let reopened = t.reopen().await;
    let (start, jobs) = from_open_jobs(&reopened).await;
    assert_eq!(jobs, unfinished());
    assert_eq!(start, full);
    reopened.close().await;
}

mod databases {
    use super::super::support::{Kind, TestStore};
    use crate::backend::{AGGREGATE, Backend, postgres::OPEN_JOB_EVENTS};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_migration_builds_the_index_from_the_events() {
        let t = TestStore::open(Kind::Sqlite).await.unwrap();
        super::the_migration_builds_the_index_from_the_events(&t).await;
        t.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_migration_builds_the_index_from_the_events() {
        let Some(t) = TestStore::open(Kind::Postgres).await else {
            return;
        };
        super::the_migration_builds_the_index_from_the_events(&t).await;
        t.cleanup().await;
    }

    /// Rows read from `events` or its indexes by the plan nodes under
    /// `node` (an `EXPLAIN (ANALYZE, FORMAT JSON)` plan), the largest.
    fn most_event_rows(node: &serde_json::Value) -> f64 {
        let on_events = node["Relation Name"] == "events"
            || node["Index Name"]
                .as_str()
                .is_some_and(|i| i.starts_with("events"));
        let own = if on_events {
            node["Actual Rows"].as_f64().unwrap_or(0.0)
                * node["Actual Loops"].as_f64().unwrap_or(1.0)
        } else {
            0.0
        };
        node["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(most_event_rows)
            .fold(own, f64::max)
    }

    /// The start's read on PostgreSQL touches the open jobs' rows only,
    /// over a table that has no statistics yet (as after a bulk write) and
    /// over one analysed. A regression test: written as a join, the read
    /// was planned as a hash join over every event until autovacuum ran
    /// (1.2 s at start-up with 1,000,000 events).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_start_reads_only_the_open_jobs_rows_whatever_the_statistics() {
        let Some(t) = TestStore::open(Kind::Postgres).await else {
            return;
        };
        let Backend::Postgres(pool) = &t.store.shared().backend else {
            unreachable!("a PostgreSQL store")
        };
        // 40,000 events of 2,000 finished jobs and 6 of 2 open ones, each
        // job in a transaction id of its own, as the store's commits are.
        for sql in [
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tx_id)
             SELECT $1, 'done-' || j, s, 'StepProgressed', '1', '{}', '{}', (1000000 + j)::text::xid8
               FROM generate_series(1, 2000) j, generate_series(1, 20) s",
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tx_id)
             SELECT $1, 'open-' || j, s, 'StepProgressed', '1', '{}', '{}', (2000000 + j)::text::xid8
               FROM generate_series(1, 2) j, generate_series(1, 3) s",
        ] {
            sqlx::query(sql).bind(AGGREGATE).execute(pool).await.expect(sql);
        }
        sqlx::query("INSERT INTO open_jobs (job_id) VALUES ('open-1'), ('open-2')")
            .execute(pool)
            .await
            .expect("open jobs");
        for analysed in [false, true] {
            if analysed {
                sqlx::query("ANALYZE events, open_jobs")
                    .execute(pool)
                    .await
                    .expect("analyse");
            }
            let sqlx::types::Json(plan): sqlx::types::Json<serde_json::Value> =
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {OPEN_JOB_EVENTS}"))
                    .bind(AGGREGATE)
                    .bind(i64::MAX)
                    .fetch_one(pool)
                    .await
                    .expect("explain");
            let root = &plan[0]["Plan"];
            assert_eq!(root["Actual Rows"], 6, "analysed: {analysed}; {plan:#}");
            let read = most_event_rows(root);
            assert!(
                read <= 6.0,
                "analysed: {analysed}: a node read {read} event rows for 6 open: {plan:#}"
            );
        }
        t.cleanup().await;
    }
}
