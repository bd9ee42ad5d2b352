//! PostgreSQL's global positions across migration 8, which numbers rows
//! within a transaction (`tx_ord`): a database written before it keeps
//! every position (so its signed checkpoints still verify), and a batch
//! written after it is one transaction whatever the jobs' sequences.

use loraflow_core::ids::JobId;
use loraflow_core::job::{JobCommand, JobEvent};

use super::batch::{lease, submitted};
use super::support::{Kind, TestStore, long_history, meta};
use crate::backend::Backend;
use crate::event::RawEvent;
use crate::{FeedFilter, verify_checkpoints};

/// The low bits of a PostgreSQL position: the row's place in its
/// transaction (before migration 8, its sequence).
const LOW: u64 = (1 << 20) - 1;

/// The position as it was computed before migration 8, from the sequence.
/// `tx_ord` stays for now, as this store's INSERT names it; it is dropped
/// once the old history is written, leaving the schema as it was.
const BEFORE_8: &[&str] = &[
    "ALTER TABLE events DROP COLUMN global_position",
    "ALTER TABLE events ADD COLUMN global_position bigint
         GENERATED ALWAYS AS (((tx_id::text)::bigint << 20) | sequence) STORED",
    "CREATE UNIQUE INDEX events_global_position ON events (global_position)",
    "CREATE INDEX events_tenant ON events (tenant, global_position)",
    "DELETE FROM schema_migrations WHERE version = 8",
];

fn positions(feed: &[RawEvent]) -> Vec<u64> {
    feed.iter().map(|e| e.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_8_keeps_every_position_and_batches_after_it() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    let Backend::Postgres(pool) = &t.store.shared().backend else {
        unreachable!("a PostgreSQL test store")
    };
    let mut tx = pool.begin().await.unwrap();
    for sql in BEFORE_8 {
        sqlx::query(sql).execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.unwrap();

    // History written under the old schema: three jobs, commits of three
    // events (each commit one transaction), then a signed checkpoint.
    for j in 0..3 {
        let job = JobId::new(format!("old-{j}"));
        let events: Vec<JobEvent> = long_history(job.as_str(), 9)[..9].to_vec();
        for (c, chunk) in events.chunks(3).enumerate() {
            t.store
                .append_events(&job, (c * 3) as u64, chunk.to_vec(), meta())
                .await
                .unwrap();
        }
    }
    sqlx::query("ALTER TABLE events DROP COLUMN tx_ord")
        .execute(pool)
        .await
        .unwrap();
    crate::tests::support::all_readable(&t.store).await;
    let old = t.store.raw_feed(None).await.unwrap();
    assert_eq!(old.len(), 27);
    assert!(
        old.iter().all(|e| e.position & LOW == e.sequence),
        "{old:?}"
    );
    let checkpoint = t.store.write_checkpoint().await.unwrap();
    assert_eq!(checkpoint.position, old.last().unwrap().position);

    // A restart applies migration 8: the same feed, position for position,
    // and the checkpoints verify against it.
    let again = t.reopen().await;
    let Backend::Postgres(pool) = &again.shared().backend else {
        unreachable!()
    };
    assert_eq!(
        crate::migrate::applied_postgres(pool).await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    crate::tests::support::all_readable(&again).await;
    let migrated = again.raw_feed(None).await.unwrap();
    assert_eq!(positions(&migrated), positions(&old));
    assert_eq!(migrated, old);
    let checkpoints = again.audit_checkpoints().await.unwrap();
    assert!(checkpoints.iter().any(|c| c == &checkpoint));
    let problems = verify_checkpoints(&migrated, &checkpoints, again.keyring());
    assert!(problems.is_empty(), "{problems:?}");
    for j in 0..3 {
        again
            .verify_job(&JobId::new(format!("old-{j}")))
            .await
            .unwrap();
    }

    // After it, five leases at one sequence (each job's third event) go in
    // one transaction, numbered 0..5 within it, above every old position.
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(submitted(&again, &format!("new-{i}")).await);
    }
    let commands: Vec<(JobId, JobCommand)> = jobs
        .iter()
        .map(|j| (j.clone(), lease("validate", &format!("{j}-l"))))
        .collect();
    let answers = again.execute_many(commands, meta()).await;
    let mut leased: Vec<u64> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().position.expect("written"))
        .collect();
    leased.sort_unstable();
    let transaction = leased[0] >> 20;
    assert!(leased.iter().all(|p| p >> 20 == transaction), "{leased:?}");
    assert_eq!(
        leased.iter().map(|p| p & LOW).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(leased[0] > checkpoint.position);

    // The feed from the start: the old events, then the new ones, each
    // once and in order.
    crate::tests::support::readable(&again, leased[4]).await;
    let all = again
        .feed()
        .read(0, 1000, &FeedFilter::all())
        .await
        .unwrap();
    // Each new job: created, submitted, its first step queued; then leased.
    assert_eq!(all.len(), 27 + 5 * 3 + 5);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        all[..27].iter().map(|e| e.position).collect::<Vec<_>>(),
        positions(&old)
    );
    for job in &jobs {
        again.verify_job(job).await.unwrap();
    }
    again.close().await;
    t.cleanup().await;
}
