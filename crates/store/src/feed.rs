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
use crate::event::{Position, StoredEvent};
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
            commits: self.shared.commits.subscribe(),
            shared: self.shared.clone(),
            cursor: after,
            filter,
            buffer: VecDeque::new(),
            wait: MIN_WAIT,
        };
        futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await;
            Some((item, s))
        })
    }
}

const MIN_WAIT: Duration = Duration::from_millis(1);

struct Subscription {
    shared: Arc<Shared>,
    commits: tokio::sync::watch::Receiver<u64>,
    cursor: Position,
    filter: FeedFilter,
    buffer: VecDeque<StoredEvent>,
    /// The current pause between empty reads: short right after a commit
    /// (on PostgreSQL a committed event can stay unreadable until older
    /// transactions end), growing to the poll interval.
    wait: Duration,
}

impl Subscription {
    async fn next(&mut self) -> Result<StoredEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.cursor = e.position;
                return Ok(e);
            }
            match self
                .shared
                .read_feed(self.cursor, SUBSCRIBE_BATCH, &self.filter)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.buffer.extend(events);
                    self.wait = MIN_WAIT;
                }
                Ok(_) => {
                    let poll = self.shared.options.poll_interval;
                    tokio::select! {
                        changed = self.commits.changed() => {
                            if changed.is_ok() {
                                self.wait = MIN_WAIT;
                            } else {
                                // The store is gone; keep polling the database.
                                tokio::time::sleep(poll).await;
                            }
                        }
                        _ = tokio::time::sleep(self.wait) => {
                            self.wait = (self.wait * 2).min(poll);
                        }
                    }
                }
                Err(e) => {
                    tokio::time::sleep(self.shared.options.poll_interval).await;
                    return Err(e);
                }
            }
        }
    }
}
