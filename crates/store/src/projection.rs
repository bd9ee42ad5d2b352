//! The projection runner: reads the global feed from the views' checkpoint
//! and folds each batch of events into the views in one database transaction
//! that also moves the checkpoint. A crash loses the whole transaction or
//! none of it, so no update is lost or applied twice; rebuilding is resetting
//! the checkpoint to 0 and running again.
//!
//! Several runners (one per engine process) may share a database: each
//! transaction locks the checkpoint row first and skips what another runner
//! applied meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use loraflow_core::ids::{JobId, StepId};
use loraflow_core::views::{JobStatus, QueueChange, QueueView, QueuedStep};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::event::{Position, StoredEvent};
use crate::feed::{FeedFilter, follow_checkpointed};
use crate::store::Shared;

/// The checkpoint name of the views kept by this crate.
pub(crate) const VIEWS: &str = "views";

/// The most statuses [`Written`] keeps; past it, it starts again empty.
const WRITTEN_STATUSES: usize = 4096;

/// The job statuses this process' views runner last wrote, and the
/// checkpoint they are the rows at. A batch that finds the checkpoint
/// there (read under its row lock) knows no other runner (another
/// process, a reset) has written since, so these are the rows as stored:
/// it folds onto them and reads only the jobs they lack. Any other
/// checkpoint empties them. The views are a fold of the feed up to the
/// checkpoint, so the rows at a checkpoint are the same whoever wrote them.
#[derive(Default)]
pub(crate) struct Written {
    at: Position,
    statuses: HashMap<JobId, JobStatus>,
}

impl Written {
    /// The statuses as stored at checkpoint `cp` (none unless they were
    /// written at it).
    pub(crate) fn at(&mut self, cp: Position) -> &HashMap<JobId, JobStatus> {
        if self.at != cp {
            self.statuses.clear();
            self.at = cp;
        }
        &self.statuses
    }

    /// `statuses` were written, and the checkpoint moved to `cp`, in one
    /// committed transaction.
    pub(crate) fn wrote(&mut self, cp: Position, statuses: impl Iterator<Item = JobStatus>) {
        if self.statuses.len() >= WRITTEN_STATUSES {
            self.statuses.clear();
        }
        self.statuses
            .extend(statuses.map(|s| (s.job_id.clone(), s)));
        self.at = cp;
    }
}

/// The jobs of `current` (a batch's statuses before it, as
/// [`fold_batch`] takes them) that have a row already: their fixed part is
/// not written again (see [`status_row`]).
pub(crate) fn stored(current: &HashMap<JobId, Option<JobStatus>>) -> HashSet<JobId> {
    current
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(id, _)| id.clone())
        .collect()
}

/// A JSON object's members.
pub(crate) type JsonMap = serde_json::Map<String, serde_json::Value>;

/// The members of a job status that its creation sets for good (the spec
/// and the parameters it resolved to: two thirds of a status' JSON). The
/// `job_status` table keeps them in a column of their own (`fixed`),
/// written with the row and never again, so that the update each batch of
/// events makes writes (and PostgreSQL parses, stores and compresses) only
/// what changes (`payload`).
const FIXED: [&str; 2] = ["spec", "params"];

/// A status as its row stores it: `payload` without the [`FIXED`]
/// members, and with `fixed` (for a new row) those members alone.
pub(crate) fn status_row(status: &JobStatus, fixed: bool) -> Result<(String, Option<String>)> {
    let serde_json::Value::Object(mut payload) = serde_json::to_value(status)? else {
        return Err(crate::Error::serialization(
            "a job status is not a JSON object",
        ));
    };
    let mut kept = JsonMap::new();
    for k in FIXED {
        if let Some(v) = payload.remove(k) {
            kept.insert(k.to_owned(), v);
        }
    }
    let fixed = fixed.then(|| serde_json::to_string(&kept)).transpose()?;
    Ok((serde_json::to_string(&payload)?, fixed))
}

/// A status from its row: `payload` with the members of `fixed` (none on a
/// row written before the split, whose payload holds them).
pub(crate) fn status_from_row(mut payload: JsonMap, fixed: Option<JsonMap>) -> Result<JobStatus> {
    payload.extend(fixed.unwrap_or_default());
    Ok(serde_json::from_value(serde_json::Value::Object(payload))?)
}

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

/// A batch's queue changes reduced to what they leave behind, for a
/// backend that writes them as a few set statements: first delete every
/// entry of `cleared` jobs, then the `removed` steps, then write `upserted`.
/// Applied in that order they leave the queue as the changes one by one do.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NetQueue {
    pub cleared: Vec<JobId>,
    pub removed: Vec<(JobId, StepId)>,
    pub upserted: Vec<QueuedStep>,
}

impl NetQueue {
    pub(crate) fn of(changes: Vec<QueueChange>) -> Self {
        // Each step's last change wins; a job's end drops what came before.
        let mut last: HashMap<(JobId, StepId), Option<QueuedStep>> = HashMap::new();
        let mut cleared: Vec<JobId> = Vec::new();
        for c in changes {
            match c {
                QueueChange::Upsert(q) => {
                    last.insert((q.job_id.clone(), q.step_id.clone()), Some(q));
                }
                QueueChange::Remove { job_id, step_id } => {
                    last.insert((job_id, step_id), None);
                }
                QueueChange::RemoveJob { job_id } => {
                    last.retain(|(j, _), _| *j != job_id);
                    if !cleared.contains(&job_id) {
                        cleared.push(job_id);
                    }
                }
            }
        }
        let mut net = Self {
            cleared,
            ..Self::default()
        };
        for (key, q) in last {
            match q {
                Some(q) => net.upserted.push(q),
                None => net.removed.push(key),
            }
        }
        net
    }
}

/// One batch: read after `from`, apply. Returns the checkpoint after it, and
/// whether anything was read.
pub(crate) async fn step(shared: &Shared, from: Position) -> Result<(Position, bool)> {
    let events = shared
        .read_feed(from, shared.options.projection_batch, &FeedFilter::all())
        .await?;
    apply(shared, from, events).await
}

/// As [`step`], reading as a follower (from the feed's tail when it can).
async fn step_followed(shared: &Arc<Shared>, from: Position) -> Result<(Position, usize)> {
    let (events, _) = shared
        .read_followed(from, shared.options.projection_batch, &FeedFilter::all())
        .await?;
    let read = events.len();
    Ok((apply(shared, from, events).await?.0, read))
}

async fn apply(
    shared: &Shared,
    from: Position,
    events: Vec<StoredEvent>,
) -> Result<(Position, bool)> {
    if events.is_empty() {
        return Ok((from, false));
    }
    let cp = {
        let _turn = shared.write_turn().await;
        // Taken out for the transaction and put back after it: a second
        // batch of this process meanwhile (`catch_up_views`) reads its rows.
        let mut written = std::mem::take(
            &mut *shared
                .views_written
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let cp = shared
            .backend
            .apply_views(VIEWS, from, &events, &mut written)
            .await;
        let mut kept = shared
            .views_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if written.at >= kept.at {
            *kept = written;
        }
        cp?
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
    follow_checkpointed(
        &shared,
        &shutdown,
        "projection batch",
        // Prompt: `create_job` answers once the views show the job.
        Duration::ZERO,
        || shared.backend.checkpoint(VIEWS),
        |p| step_followed(&shared, p),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use loraflow_core::ids::TenantId;
    use loraflow_core::workflow::{Requirements, StepKind};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn queued(job: &str, step: &str, position: u64) -> QueuedStep {
        let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        QueuedStep {
            job_id: JobId::new(job),
            step_id: StepId::new(step),
            kind: StepKind::new("noop"),
            attempt: 1,
            tenant: TenantId::new("acme"),
            priority: 0,
            requires: Requirements::default(),
            queued_at: at,
            not_before: at,
            position,
        }
    }

    type Model = BTreeMap<(String, String), u64>;

    /// The queue after `changes` one by one, as the per-change statements
    /// leave it.
    fn one_by_one(mut queue: Model, changes: &[QueueChange]) -> Model {
        for c in changes {
            match c {
                QueueChange::Upsert(q) => {
                    queue.insert((q.job_id.to_string(), q.step_id.to_string()), q.position);
                }
                QueueChange::Remove { job_id, step_id } => {
                    queue.remove(&(job_id.to_string(), step_id.to_string()));
                }
                QueueChange::RemoveJob { job_id } => {
                    queue.retain(|(j, _), _| j != job_id.as_str());
                }
            }
        }
        queue
    }

    /// The queue after the net changes, in their documented order.
    fn net(mut queue: Model, net: &NetQueue) -> Model {
        queue.retain(|(j, _), _| !net.cleared.iter().any(|c| c.as_str() == j));
        for (j, s) in &net.removed {
            queue.remove(&(j.to_string(), s.to_string()));
        }
        for q in &net.upserted {
            queue.insert((q.job_id.to_string(), q.step_id.to_string()), q.position);
        }
        queue
    }

    #[test]
    fn net_queue_changes_leave_the_queue_as_the_changes_one_by_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let jobs = ["j1", "j2", "j3"];
        let steps = ["s1", "s2", "s3"];
        for round in 0..2_000u64 {
            let mut before = Model::new();
            for j in jobs {
                for s in steps {
                    if rng.random_bool(0.4) {
                        before.insert((j.into(), s.into()), 0);
                    }
                }
            }
            let changes: Vec<QueueChange> = (0..rng.random_range(0..12u64))
                .map(|i| {
                    let j = jobs[rng.random_range(0..jobs.len())];
                    let s = steps[rng.random_range(0..steps.len())];
                    match rng.random_range(0..5) {
                        0 => QueueChange::RemoveJob {
                            job_id: JobId::new(j),
                        },
                        1 | 2 => QueueChange::Remove {
                            job_id: JobId::new(j),
                            step_id: StepId::new(s),
                        },
                        _ => QueueChange::Upsert(queued(j, s, round * 100 + i + 1)),
                    }
                })
                .collect();
            let reduced = NetQueue::of(changes.clone());
            assert_eq!(
                net(before.clone(), &reduced),
                one_by_one(before, &changes),
                "{changes:?}"
            );
        }
    }
}
