//! The in-process backend, for tests and examples: an event log with the
//! same optimistic-concurrency check and global positions as the databases,
//! and views kept in memory. Everything is lost when the store is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use loraflow_core::ids::JobId;
use loraflow_core::views::{JobListFilter, JobStatus, QueueView, QueuedStep};
use serde_json::Value;

use super::JobLog;
use crate::chain::{Checkpoint, Head};
use crate::event::{Position, RawEvent, TENANT};
use crate::feed::FeedFilter;
use crate::projection::fold_batch;
use crate::views::ListCursor;

#[derive(Default)]
struct LogState {
    /// Every event in commit order; the position of `rows[i]` is `i + 1`.
    rows: Vec<(String, SerializedEvent)>,
    /// Row indexes of each aggregate, in sequence order.
    by_aggregate: HashMap<(String, String), Vec<usize>>,
    /// Each job's signed head, written with its events.
    heads: HashMap<String, Head>,
    checkpoints: Vec<Checkpoint>,
    /// Jobs that have not ended (the databases' `open_jobs` table).
    open: HashSet<String>,
}

/// The event log. A std `Mutex`: it is never held across an await point.
#[derive(Default)]
pub(crate) struct MemoryLog {
    state: Mutex<LogState>,
    /// Reads of the feed so far (see [`reads`](Self::reads)).
    reads: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every change is
    // a single push or insert), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryLog {
    /// How many times the feed has been read: what a database would count
    /// as statements, for tests of who reads it when.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn events_of(&self, aggregate_type: &str, id: &str, after: usize) -> Vec<SerializedEvent> {
        let s = lock(&self.state);
        s.by_aggregate
            .get(&(aggregate_type.to_owned(), id.to_owned()))
            .map(|idx| {
                idx.iter()
                    .map(|&i| &s.rows[i].1)
                    .filter(|e| e.sequence > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A job's events and head, under one lock.
    pub(crate) fn job_log(&self, aggregate_type: &str, id: &JobId) -> JobLog {
        let s = lock(&self.state);
        let events = s
            .by_aggregate
            .get(&(aggregate_type.to_owned(), id.to_string()))
            .map(|idx| {
                idx.iter()
                    .map(|&i| Self::raw(i + 1, &s.rows[i].1))
                    .collect()
            })
            .unwrap_or_default();
        JobLog {
            events,
            head: s.heads.get(id.as_str()).cloned(),
        }
    }

    pub(crate) fn heads(&self) -> Vec<Head> {
        let mut heads: Vec<Head> = lock(&self.state).heads.values().cloned().collect();
        heads.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        heads
    }

    pub(crate) fn checkpoints(&self) -> Vec<Checkpoint> {
        lock(&self.state).checkpoints.clone()
    }

    pub(crate) fn insert_checkpoint(&self, c: Checkpoint) {
        let mut s = lock(&self.state);
        if s.checkpoints.iter().all(|x| x.position != c.position) {
            s.checkpoints.push(c);
            s.checkpoints.sort_by_key(|c| c.position);
        }
    }

    fn raw(position: usize, e: &SerializedEvent) -> RawEvent {
        RawEvent {
            position: position as Position,
            job_id: JobId::new(e.aggregate_id.clone()),
            sequence: e.sequence as u64,
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            payload: e.payload.clone(),
            metadata: e.metadata.clone(),
        }
    }

    pub(crate) fn read(
        &self,
        aggregate_type: &str,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Vec<RawEvent> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = lock(&self.state);
        let start = (after as usize).min(s.rows.len());
        s.rows[start..]
            .iter()
            .enumerate()
            .filter(|(_, (t, e))| {
                t == aggregate_type
                    && filter
                        .job
                        .as_ref()
                        .is_none_or(|j| j.as_str() == e.aggregate_id)
                    && filter.tenant.as_ref().is_none_or(|t| {
                        e.metadata.get(TENANT).and_then(Value::as_str) == Some(t.as_str())
                    })
            })
            .take(limit)
            .map(|(i, (_, e))| Self::raw(start + i + 1, e))
            .collect()
    }

    pub(crate) fn head(&self) -> Position {
        lock(&self.state).rows.len() as Position
    }

    pub(crate) fn job_events(&self, aggregate_type: &str, id: &JobId) -> Vec<RawEvent> {
        let s = lock(&self.state);
        s.by_aggregate
            .get(&(aggregate_type.to_owned(), id.to_string()))
            .map(|idx| {
                idx.iter()
                    .map(|&i| Self::raw(i + 1, &s.rows[i].1))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn position_of(
        &self,
        aggregate_type: &str,
        id: &JobId,
        sequence: u64,
    ) -> Option<Position> {
        let s = lock(&self.state);
        let idx = s
            .by_aggregate
            .get(&(aggregate_type.to_owned(), id.to_string()))?;
        let i = *idx.get((sequence as usize).checked_sub(1)?)?;
        Some(i as Position + 1)
    }

    /// Store an event as it is given, bypassing every check but the sequence
    /// (for tests that plant old or tampered events).
    #[cfg(test)]
    pub(crate) fn insert_raw(
        &self,
        aggregate_type: &str,
        e: SerializedEvent,
    ) -> Result<(), PersistenceError> {
        self.append(aggregate_type, &[e], None)
    }

    fn append(
        &self,
        aggregate_type: &str,
        events: &[SerializedEvent],
        head: Option<&Head>,
    ) -> Result<(), PersistenceError> {
        let mut s = lock(&self.state);
        let Some(first) = events.first() else {
            return Ok(());
        };
        let key = (aggregate_type.to_owned(), first.aggregate_id.clone());
        let current = s.by_aggregate.get(&key).map_or(0, Vec::len);
        // The check the databases make with their primary key.
        for (i, e) in events.iter().enumerate() {
            if e.aggregate_id != first.aggregate_id || e.sequence != current + 1 + i {
                return Err(PersistenceError::OptimisticLockError);
            }
        }
        for e in events {
            let at = s.rows.len();
            s.rows.push((aggregate_type.to_owned(), e.clone()));
            s.by_aggregate.entry(key.clone()).or_default().push(at);
        }
        if let Some(h) = head {
            s.heads.insert(h.job_id.clone(), h.clone());
        }
        match super::OpenJobs::of(events) {
            super::OpenJobs::Unchanged => {}
            super::OpenJobs::Opens => {
                s.open.insert(first.aggregate_id.clone());
            }
            super::OpenJobs::Closes => {
                s.open.remove(&first.aggregate_id);
            }
        }
        Ok(())
    }

    /// The events at or before `upto` of the jobs that have not ended, in
    /// feed order.
    pub(crate) fn open_job_events(&self, aggregate_type: &str, upto: Position) -> Vec<RawEvent> {
        let s = lock(&self.state);
        let mut rows: Vec<usize> = s
            .open
            .iter()
            .filter_map(|id| s.by_aggregate.get(&(aggregate_type.to_owned(), id.clone())))
            .flatten()
            .copied()
            .filter(|&i| (i as Position) < upto)
            .collect();
        rows.sort_unstable();
        rows.into_iter()
            .map(|i| Self::raw(i + 1, &s.rows[i].1))
            .collect()
    }

    /// Append one job's events and set its head; the position of the last.
    pub(crate) fn insert(
        &self,
        aggregate_type: &str,
        events: &[SerializedEvent],
        head: &Head,
    ) -> Result<Position, PersistenceError> {
        self.append(aggregate_type, events, Some(head))?;
        let last = events.last().ok_or_else(|| {
            PersistenceError::UnknownError("an insert needs at least one event".into())
        })?;
        self.position_of(
            aggregate_type,
            &JobId::new(&last.aggregate_id),
            last.sequence as u64,
        )
        .ok_or_else(|| PersistenceError::UnknownError("an appended event vanished".into()))
    }

    /// Overwrite a stored event's payload (tests of the hash chain).
    #[cfg(test)]
    pub(crate) fn tamper(&self, position: Position, payload: Value) {
        lock(&self.state).rows[position as usize - 1].1.payload = payload;
    }
}

fn replay_stream(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    tokio::spawn(async move {
        for e in events {
            if feed.push(Ok(e)).await.is_err() {
                return;
            }
        }
    });
    stream
}

impl PersistedEventRepository for MemoryLog {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.events_of(A::TYPE, aggregate_id, 0))
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.events_of(A::TYPE, aggregate_id, last_sequence))
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        // Snapshots are never used (see DESIGN.md, "Known limits of cqrs-es").
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append(A::TYPE, events, None)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(replay_stream(self.events_of(A::TYPE, aggregate_id, 0)))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let all = lock(&self.state)
            .rows
            .iter()
            .filter(|(t, _)| t == A::TYPE)
            .map(|(_, e)| e.clone())
            .collect();
        Ok(replay_stream(all))
    }
}

/// The views of the memory backend, with their checkpoint under the same lock:
/// the in-memory form of "checkpoint in the same transaction".
#[derive(Default)]
pub(crate) struct MemoryViews {
    state: Mutex<ViewState>,
}

#[derive(Default)]
struct ViewState {
    statuses: HashMap<JobId, JobStatus>,
    queue: QueueView,
    checkpoints: HashMap<String, Position>,
}

impl MemoryViews {
    pub(crate) fn checkpoint(&self, name: &str) -> Position {
        lock(&self.state)
            .checkpoints
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn apply(
        &self,
        name: &str,
        from: Position,
        events: &[crate::event::StoredEvent],
    ) -> Position {
        let mut s = lock(&self.state);
        let cp = s.checkpoints.get(name).copied().unwrap_or(0);
        if cp < from {
            return cp;
        }
        let events: Vec<_> = events.iter().filter(|e| e.position > cp).collect();
        let Some(last) = events.last().map(|e| e.position) else {
            return cp;
        };
        let current = events
            .iter()
            .map(|e| (e.job_id.clone(), s.statuses.get(&e.job_id).cloned()))
            .collect();
        let (statuses, changes) = fold_batch(current, events.iter().copied());
        s.statuses.extend(statuses);
        for c in changes {
            s.queue.apply(c);
        }
        s.checkpoints.insert(name.to_owned(), last);
        last
    }

    pub(crate) fn reset(&self, name: &str) {
        let mut s = lock(&self.state);
        s.statuses.clear();
        s.queue = QueueView::default();
        s.checkpoints.insert(name.to_owned(), 0);
    }

    pub(crate) fn job_status(&self, id: &JobId) -> Option<JobStatus> {
        lock(&self.state).statuses.get(id).cloned()
    }

    pub(crate) fn list(
        &self,
        filter: &JobListFilter,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Vec<JobStatus> {
        let s = lock(&self.state);
        let mut all: Vec<&JobStatus> = s
            .statuses
            .values()
            .filter(|j| filter.matches(j))
            .filter(|j| after.is_none_or(|c| c.precedes(j)))
            .collect();
        all.sort_by(|a, b| loraflow_core::views::job_list::list_order(a, b));
        all.into_iter().take(limit).cloned().collect()
    }

    pub(crate) fn queue(&self) -> Vec<QueuedStep> {
        lock(&self.state)
            .queue
            .entries()
            .into_iter()
            .map(|e| e.step)
            .collect()
    }
}
