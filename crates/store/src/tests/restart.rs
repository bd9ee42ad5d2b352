//! Stopping the projection runner mid-stream (cleanly, or by killing its task
//! inside a transaction) and starting it again gives the same views as a
//! rebuild from position 0.

use std::time::Duration;

use loraflow_core::ids::JobId;
use tokio_util::sync::CancellationToken;

use super::support::{TestStore, long_history, meta, on_every_backend};
use crate::{JobListQuery, Store};

async fn snapshot(store: &Store, jobs: usize) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let mut statuses = Vec::new();
    for j in 0..jobs {
        let s = store
            .views()
            .job_status(&JobId::new(format!("r{j}")))
            .await
            .unwrap();
        statuses.push(serde_json::to_value(s).unwrap());
    }
    let queue = store
        .views()
        .queue()
        .await
        .unwrap()
        .into_iter()
        .map(|q| serde_json::to_value(q).unwrap())
        .collect();
    (statuses, queue)
}

async fn views_after_restarts_equal_a_rebuild(t: &TestStore) {
    const JOBS: usize = 6;
    const EVENTS: usize = 60;
    let histories: Vec<_> = (0..JOBS)
        .map(|j| long_history(&format!("r{j}"), EVENTS)[..EVENTS].to_vec())
        .collect();
    let mut at = [0u64; JOBS];
    let mut round = 0;
    let mut last_position = 0;
    let mut runner: Option<(
        CancellationToken,
        tokio::task::JoinHandle<crate::Result<()>>,
    )> = None;
    while at.iter().any(|a| (*a as usize) < EVENTS) {
        // Write a few events to every job.
        for (j, h) in histories.iter().enumerate() {
            let from = at[j] as usize;
            let to = (from + 4).min(EVENTS);
            if from < to {
                let a = t
                    .store
                    .append_events(
                        &JobId::new(format!("r{j}")),
                        at[j],
                        h[from..to].to_vec(),
                        meta(),
                    )
                    .await
                    .unwrap();
                at[j] = to as u64;
                last_position = last_position.max(a.position);
            }
        }
        // Every other round, stop the runner: cancel it, or kill it where it is.
        round += 1;
        match runner.take() {
            Some((token, handle)) if round % 4 == 0 => {
                token.cancel();
                handle.await.unwrap().unwrap();
            }
            Some((_, handle)) if round % 2 == 0 => {
                handle.abort();
                let _ = handle.await;
            }
            Some(r) => runner = Some(r),
            None => {
                // A "new process" takes over on a store opened afresh (the
                // memory backend has no database to share).
                let fresh = round % 3 == 0 && t.kind != super::support::Kind::Memory;
                let store = if fresh {
                    t.reopen().await
                } else {
                    t.store.clone()
                };
                let token = CancellationToken::new();
                let handle = store.start_projections(token.clone());
                runner = Some((token, handle));
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let (token, handle) = match runner.take() {
        Some(r) => r,
        None => {
            let token = CancellationToken::new();
            (token.clone(), t.store.start_projections(token))
        }
    };
    t.store
        .wait_for_timeout(last_position, Duration::from_secs(30))
        .await
        .expect("views catch up after restarts");
    token.cancel();
    handle.await.unwrap().unwrap();

    let incremental = snapshot(&t.store, JOBS).await;
    let page = t
        .store
        .views()
        .list_jobs(&JobListQuery::default())
        .await
        .unwrap();
    t.store.rebuild_views().await.unwrap();
    let rebuilt = snapshot(&t.store, JOBS).await;
    assert_eq!(incremental, rebuilt);
    assert_eq!(
        page,
        t.store
            .views()
            .list_jobs(&JobListQuery::default())
            .await
            .unwrap()
    );
    assert_eq!(page.jobs.len(), JOBS);
    // Each job's status saw every event exactly once.
    for j in 0..JOBS {
        let s = t
            .store
            .views()
            .job_status(&JobId::new(format!("r{j}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.sequence, EVENTS as u64);
    }
}

/// Rebuilding while a runner is mid-stream: the runner's batch, read before
/// the reset, must not be applied past the hole the reset made.
async fn a_rebuild_during_projection_loses_nothing(t: &TestStore) {
    const JOBS: usize = 4;
    const EVENTS: usize = 40;
    let token = CancellationToken::new();
    let runner = t.store.start_projections(token.clone());
    let mut last = 0;
    for round in 0..EVENTS / 5 {
        for j in 0..JOBS {
            let h = long_history(&format!("r{j}"), EVENTS);
            let from = round * 5;
            let a = t
                .store
                .append_events(
                    &JobId::new(format!("r{j}")),
                    from as u64,
                    h[from..from + 5].to_vec(),
                    meta(),
                )
                .await
                .unwrap();
            last = last.max(a.position);
        }
        if round % 3 == 1 {
            t.store.rebuild_views().await.unwrap();
        }
    }
    t.store
        .wait_for_timeout(last, Duration::from_secs(30))
        .await
        .expect("views catch up");
    token.cancel();
    runner.await.unwrap().unwrap();
    let incremental = snapshot(&t.store, JOBS).await;
    t.store.rebuild_views().await.unwrap();
    assert_eq!(incremental, snapshot(&t.store, JOBS).await);
    for j in 0..JOBS {
        let s = t
            .store
            .views()
            .job_status(&JobId::new(format!("r{j}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.sequence, EVENTS as u64);
    }
}

on_every_backend!(
    views_after_restarts_equal_a_rebuild,
    a_rebuild_during_projection_loses_nothing
);
