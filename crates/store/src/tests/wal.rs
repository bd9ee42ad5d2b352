//! SQLite's write-ahead log is copied into the database file by the
//! store's own task, never by a commit that would wait for it.

use std::time::Duration;

use loraflow_core::ids::JobId;
use loraflow_core::job::canned::sample_spec;
use loraflow_core::job::{CreateJob, JobCommand};

use super::support::{Kind, TestStore, meta};
use crate::backend::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_leave_the_write_ahead_log_to_the_store_s_own_task() {
    let t = TestStore::open(Kind::Sqlite).await.unwrap();
    let Backend::Sqlite(pool) = &t.store.shared().backend else {
        panic!("a SQLite store");
    };
    // On every pooled connection: no commit checkpoints.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = pool.acquire().await.unwrap();
        let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(auto, 0);
        held.push(c);
    }
    drop(held);

    let db = std::path::PathBuf::from(t.url.strip_prefix("sqlite://").unwrap());
    let size = || std::fs::metadata(&db).unwrap().len();
    // What the open wrote reaches the file first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = size();
    for i in 0..40 {
        let job = JobId::new(format!("job-{i}"));
        t.store
            .execute(
                &job,
                JobCommand::Create(CreateJob {
                    job_id: job.clone(),
                    spec: sample_spec(),
                }),
                meta(),
            )
            .await
            .unwrap();
    }
    // Far below the 1,000 pages at which a commit would have copied it:
    // only the store's task brings these events into the file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while size() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database file stayed at {before} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.cleanup().await;
}
