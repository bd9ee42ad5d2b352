//! The global event feed: every job's events in one order, by global
//! position, read in pages or followed live.
//!
//! Positions are exclusive bounds: `read(p, ..)` and `subscribe(p, ..)`
//! return the events *after* `p`, so a consumer resumes from the position of
//! the last event it handled (0 for the start).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use loraflow_core::ids::{JobId, TenantId};

use crate::error::Result;
use crate::event::{Position, StoredEvent, TENANT};
use crate::store::Shared;

/// Which events a reader wants; both fields set means both must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    pub tenant: Option<TenantId>,
    pub job: Option<JobId>,
}

impl FeedFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn tenant(tenant: impl Into<TenantId>) -> Self {
        Self {
            tenant: Some(tenant.into()),
            job: None,
        }
    }

    pub fn job(job: impl Into<JobId>) -> Self {
        Self {
            tenant: None,
            job: Some(job.into()),
        }
    }
}

/// A handle on the feed; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    pub(crate) shared: Arc<Shared>,
}

/// Events a subscription reads per query.
const SUBSCRIBE_BATCH: usize = 500;

impl Feed {
    /// Up to `limit` events after position `after` (exclusive), in feed order.
    pub async fn read(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<Vec<StoredEvent>> {
        self.shared.read_feed(after, limit, filter).await
    }

    /// The position of the last event readers can see now (0 when empty).
    pub async fn head(&self) -> Result<Position> {
        self.shared.backend.head().await
    }

    /// Where a reader that keeps only unfinished jobs starts: the head now,
    /// and every event up to it of the jobs that have not ended, in feed
    /// order. Finished jobs' events are left out (an index of open jobs,
    /// kept in each commit's transaction, names the rest), so the read grows
    /// with the work in flight, not with the history. Folding these events
    /// and then following [`subscribe`](Self::subscribe) from the head gives
    /// a fold of the whole feed minus the jobs that had ended by the head.
    ///
    /// A job that ends after the head but before this read is left out too;
    /// its later events, up to the one that ends it, follow in the
    /// subscription.
    pub async fn in_flight(&self) -> Result<(Position, Vec<StoredEvent>)> {
        let head = self.head().await?;
        let events = self
            .shared
            .backend
            .open_job_events(head)
            .await?
            .iter()
            .map(|raw| raw.to_stored(&self.shared.upcasters))
            .collect::<Result<_>>()?;
        Ok((head, events))
    }

    /// The events after `after` that match `filter`: first those stored, then
    /// each new one as it becomes readable. The stream never ends by itself.
    /// Commits of this process wake it at once; those of other processes are
    /// found by polling every `StoreOptions::poll_interval`. A read error is
    /// yielded as an `Err` item and the subscription carries on from where it
    /// was after a pause; drop the stream to stop.
    pub fn subscribe(
        &self,
        after: Position,
        filter: FeedFilter,
    ) -> impl Stream<Item = Result<StoredEvent>> + Send + 'static + use<> {
        let state = Subscription {
            wake: Wake::new(&self.shared),
            shared: self.shared.clone(),
            cursor: after,
            filter,
            buffer: VecDeque::new(),
        };
        futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await;
            Some((item, s))
        })
    }
}

const MIN_WAIT: Duration = Duration::from_millis(1);

/// Events the [`Tail`] keeps.
pub(crate) const TAIL_EVENTS: usize = 2048;

/// The recent feed, read from the database once for every follower in this
/// process (subscriptions, the views and the webhook outbox), instead of
/// once by each of them after every commit. Started by the first follower;
/// it follows the feed from the head at its start and keeps the last
/// [`TAIL_EVENTS`] events. A follower whose position lies before what the
/// tail holds reads the database until it reaches it.
#[derive(Default)]
pub(crate) struct Tail {
    state: std::sync::Mutex<TailState>,
    /// The position up to which the tail holds every event; moves as it reads.
    moved: tokio::sync::watch::Sender<Position>,
    started: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct TailState {
    /// Whether the tail has read the head: until then it covers nothing.
    running: bool,
    /// Every event after `from` up to `cursor` is in `events`.
    from: Position,
    cursor: Position,
    events: VecDeque<StoredEvent>,
}

impl Tail {
    /// Start the tail's reader if it is not running (within a tokio runtime).
    pub(crate) fn start(&self, shared: &Arc<Shared>) {
        use std::sync::atomic::Ordering;
        if shared.stop.is_cancelled() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(shared);
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            // However the reader ends (the store closed, its runtime shut
            // down), followers go back to the database and the next one
            // starts it again.
            let _ended = Ended(weak.clone());
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = follow_tail(weak) => {}
            }
        });
    }

    fn ended(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = TailState::default();
        self.started
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// A receiver that changes each time the tail moves.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<Position> {
        self.moved.subscribe()
    }

    /// Up to `limit` events after `after` that match `filter`, and the
    /// position up to which the tail looked (every event up to it that
    /// matches is in the answer); `None` when the tail does not hold every
    /// event after `after`.
    pub(crate) fn read(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Option<(Vec<StoredEvent>, Position)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.running || after < state.from {
            return None;
        }
        let first = state.events.partition_point(|e| e.position <= after);
        let mut found = Vec::new();
        let mut looked = after;
        for e in state.events.range(first..) {
            if found.len() == limit {
                return Some((found, looked));
            }
            if matches(filter, e) {
                found.push(e.clone());
            }
            looked = e.position;
        }
        Some((found, state.cursor.max(after)))
    }

    fn begin_at(&self, head: Position) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = TailState {
            running: true,
            from: head,
            cursor: head,
            events: VecDeque::new(),
        };
        drop(state);
        self.moved.send_replace(head);
    }

    fn push(&self, events: Vec<StoredEvent>) {
        let Some(last) = events.last().map(|e| e.position) else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.events.extend(events);
        while state.events.len() > TAIL_EVENTS {
            if let Some(e) = state.events.pop_front() {
                state.from = e.position;
            }
        }
        state.cursor = last;
        drop(state);
        self.moved.send_replace(last);
    }
}

struct Ended(std::sync::Weak<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.tail.ended();
        }
    }
}

fn matches(filter: &FeedFilter, e: &StoredEvent) -> bool {
    filter.job.as_ref().is_none_or(|j| *j == e.job_id)
        && filter
            .tenant
            .as_ref()
            .is_none_or(|t| e.metadata.get(TENANT).map(String::as_str) == Some(t.as_str()))
}

/// The tail's reader: the head, then every event after it, as a
/// subscription reads them.
async fn follow_tail(weak: std::sync::Weak<Shared>) {
    let Some(mut wake) = weak.upgrade().map(|s| Wake::new(&s)) else {
        return;
    };
    let head = loop {
        let Some(shared) = weak.upgrade() else { return };
        match shared.backend.head().await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "the feed's tail cannot read the head; trying again");
                tokio::time::sleep(shared.options.poll_interval).await;
            }
        }
    };
    let Some(shared) = weak.upgrade() else { return };
    shared.tail.begin_at(head);
    drop(shared);
    let mut cursor = head;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        wake.mark();
        match shared
            .read_feed(cursor, SUBSCRIBE_BATCH, &FeedFilter::all())
            .await
        {
            Ok(events) => {
                let full = events.len() == SUBSCRIBE_BATCH;
                if let Some(last) = events.last() {
                    cursor = last.position;
                    shared.tail.push(events);
                    // Its own move is no news to the tail.
                    wake.moves.borrow_and_update();
                    wake.reset();
                }
                if full {
                    continue;
                }
                // Once it holds every commit of this process, what is left
                // to find is other processes' (they notify, or the poll
                // finds them): no read until then. Until then, a commit
                // of this process that a transaction still running hides
                // is looked for again shortly.
                let caught_up = cursor
                    >= shared
                        .last_committed
                        .load(std::sync::atomic::Ordering::Acquire);
                drop(shared);
                if caught_up {
                    wake.idle();
                }
                wake.wait().await;
            }
            Err(e) => {
                let poll = shared.options.poll_interval;
                drop(shared);
                tracing::warn!(error = %e, "the feed's tail cannot read the feed; trying again");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

impl Shared {
    /// What a follower of the feed reads next: from the tail when it holds
    /// every event after `after`, else from the database. With the
    /// position up to which it looked (at least the last event's).
    pub(crate) async fn read_followed(
        self: &Arc<Self>,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<(Vec<StoredEvent>, Position)> {
        self.tail.start(self);
        if let Some(read) = self.tail.read(after, limit, filter) {
            return Ok(read);
        }
        let events = self.read_feed(after, limit, filter).await?;
        let upto = events.last().map_or(after, |e| e.position);
        Ok((events, upto))
    }
}

/// Wakes a follower of the feed after an empty read: a commit of this
/// process, the tail moving, or a pause growing to the poll interval (for
/// other processes' commits while the tail is not running).
pub(crate) struct Wake {
    commits: tokio::sync::watch::Receiver<u64>,
    moves: tokio::sync::watch::Receiver<Position>,
    wait: Duration,
    poll: Duration,
}

impl Wake {
    pub(crate) fn new(shared: &Shared) -> Self {
        Self {
            commits: shared.commits.subscribe(),
            moves: shared.tail.moves(),
            wait: MIN_WAIT,
            poll: shared.options.poll_interval,
        }
    }

    /// Call before each read: what changes after it wakes [`wait`](Self::wait).
    pub(crate) fn mark(&mut self) {
        self.commits.borrow_and_update();
        self.moves.borrow_and_update();
    }

    /// Something was read: the next empty read waits the shortest pause.
    pub(crate) fn reset(&mut self) {
        self.wait = MIN_WAIT;
    }

    /// Nothing is expected but what wakes [`wait`](Self::wait): its pause
    /// is the poll interval.
    fn idle(&mut self) {
        self.wait = self.poll;
    }

    /// After an empty read: until something may have changed.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            changed = self.commits.changed() => {
                if changed.is_err() {
                    // The store is gone; keep polling the database.
                    tokio::time::sleep(self.poll).await;
                } else {
                    self.wait = MIN_WAIT;
                }
            }
            Ok(()) = self.moves.changed() => self.wait = MIN_WAIT,
            _ = tokio::time::sleep(self.wait) => self.wait = (self.wait * 2).min(self.poll),
        }
    }
}

/// The loop of a follower that keeps its checkpoint in the database (the
/// views, the webhook outbox): from the stored `checkpoint`, one `step`
/// after another (each answering its new position and how many events it
/// read, at most the store's `projection_batch`), waiting on a [`Wake`]
/// after an empty one. After a batch that was not full (the follower has
/// caught up) it waits `pace` before reading again, so that the events
/// written meanwhile share its next transaction (`Duration::ZERO`: no
/// wait). An error is logged as `what` and, after the poll interval, the
/// checkpoint is read again: the failed transaction may or may not have
/// committed. Until `shutdown`.
pub(crate) async fn follow_checkpointed<C, S>(
    shared: &Shared,
    shutdown: &tokio_util::sync::CancellationToken,
    what: &str,
    pace: Duration,
    checkpoint: impl Fn() -> C,
    step: impl Fn(Position) -> S,
) -> Result<()>
where
    C: std::future::Future<Output = Result<Position>>,
    S: std::future::Future<Output = Result<(Position, usize)>>,
{
    let mut wake = Wake::new(shared);
    let poll = shared.options.poll_interval;
    let batch = shared.options.projection_batch;
    let mut from: Option<Position> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        wake.mark();
        let result = match from {
            Some(p) => step(p).await,
            None => match checkpoint().await {
                Ok(p) => step(p).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((cp, read)) if read > 0 => {
                from = Some(cp);
                wake.reset();
                if read < batch && !pace.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pace) => {}
                    }
                }
            }
            Ok((cp, _)) => {
                from = Some(cp);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = wake.wait() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                from = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}

struct Subscription {
    shared: Arc<Shared>,
    wake: Wake,
    cursor: Position,
    filter: FeedFilter,
    buffer: VecDeque<StoredEvent>,
}

impl Subscription {
    async fn next(&mut self) -> Result<StoredEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.cursor = e.position;
                return Ok(e);
            }
            self.wake.mark();
            match self
                .shared
                .read_followed(self.cursor, SUBSCRIBE_BATCH, &self.filter)
                .await
            {
                Ok((events, _)) if !events.is_empty() => {
                    self.buffer.extend(events);
                    self.wake.reset();
                }
                Ok((_, upto)) => {
                    // Nothing matched up to `upto`: look on from there.
                    self.cursor = upto;
                    self.wake.wait().await;
                }
                Err(e) => {
                    tokio::time::sleep(self.shared.options.poll_interval).await;
                    return Err(e);
                }
            }
        }
    }
}
