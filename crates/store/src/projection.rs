//! The projection runner: reads the global feed from the views' checkpoint
//! and folds each batch of events into the views in one database transaction
//! that also moves the checkpoint. A crash loses the whole transaction or
//! none of it, so no update is lost or applied twice; rebuilding is resetting
//! the checkpoint to 0 and running again.
//!
//! Several runners (one per engine process) may share a database: each
//! transaction locks the checkpoint row first and skips what another runner
//! applied meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loraflow_core::ids::JobId;
use loraflow_core::views::{JobStatus, QueueChange, QueueView};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::event::{Position, StoredEvent};
use crate::feed::FeedFilter;
use crate::store::Shared;

/// The checkpoint name of the views kept by this crate.
pub(crate) const VIEWS: &str = "views";

/// Fold `events` into the statuses of their jobs (`current`: each job's
/// status before the batch, `None` if it has none yet) and list the queue
/// changes they make, in order.
pub(crate) fn fold_batch<'a>(
    mut current: HashMap<JobId, Option<JobStatus>>,
    events: impl Iterator<Item = &'a StoredEvent>,
) -> (HashMap<JobId, JobStatus>, Vec<QueueChange>) {
    let mut changes = Vec::new();
    for e in events {
        let meta = e.meta();
        let slot = current.entry(e.job_id.clone()).or_default();
        *slot = JobStatus::fold(slot.take(), meta, &e.payload);
        changes.extend(QueueView::changes(&e.job_id, meta, &e.payload));
    }
    let statuses = current
        .into_iter()
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect();
    (statuses, changes)
}

/// One batch: read after `from`, apply. Returns the checkpoint after it, and
/// whether anything was read.
pub(crate) async fn step(shared: &Shared, from: Position) -> Result<(Position, bool)> {
    let events = shared
        .read_feed(from, shared.options.projection_batch, &FeedFilter::all())
        .await?;
    if events.is_empty() {
        return Ok((from, false));
    }
    let cp = {
        let _turn = shared.write_turn().await;
        shared.backend.apply_views(VIEWS, from, &events).await?
    };
    shared.views_at.send_if_modified(|at| {
        let moved = cp > *at;
        *at = (*at).max(cp);
        moved
    });
    Ok((cp, true))
}

/// Run until `shutdown` is cancelled. Database errors are logged and retried
/// after the poll interval: a projection never skips an event, so one it
/// cannot read stops it until a release that can is deployed.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<()> {
    let mut commits = shared.commits.subscribe();
    let poll = shared.options.poll_interval;
    let mut wait = Duration::from_millis(1);
    let mut from: Option<Position> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let result = match from {
            Some(p) => step(&shared, p).await,
            None => match shared.backend.checkpoint(VIEWS).await {
                Ok(p) => step(&shared, p).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((cp, true)) => {
                from = Some(cp);
                wait = Duration::from_millis(1);
            }
            Ok((cp, false)) => {
                from = Some(cp);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = commits.changed() => wait = Duration::from_millis(1),
                    _ = tokio::time::sleep(wait) => wait = (wait * 2).min(poll),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "projection batch failed; retrying");
                // Re-read the checkpoint: the failed transaction may or may
                // not have committed.
                from = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}
