//! The webhook outbox and delivery log.
//!
//! The outbox is filled from the global feed like the views are: a runner
//! reads the feed after the outbox checkpoint (`webhooks` in
//! `projection_checkpoints`) and, in one transaction that also moves the
//! checkpoint, records the subscriptions that `JobCreated` events carry
//! (`JobSpec::webhooks`) and one delivery per matching event and URL. A crash
//! loses the whole transaction or none of it, so no event is lost or queued
//! twice.
//!
//! Deliveries of one subscription (job and URL) go out in feed order: only
//! the earliest pending one is *armed* (has a `next_attempt_at`); the others
//! wait with none, and the one after is armed in the same transaction that
//! records the earlier one delivered or abandoned. So "what is due" is one
//! indexed range query, and order needs no locking.
//!
//! A delivery worker (the engine's) asks for [`Webhooks::due`] deliveries,
//! [`Webhooks::claim`]s each (moving its next attempt to the end of a lease,
//! so that another process skips it and a crash only delays it), sends it,
//! and [`Webhooks::record`]s the attempt: the attempt row and the delivery's
//! new state in one transaction.
//!
//! - `fold`: which subscriptions and deliveries a batch of events makes.
//! - `runner`: the loop that fills the outbox.
//! - `sqlite`, `postgres`, `memory`: the tables and their SQL.

mod fold;
pub(crate) mod memory;
pub(crate) mod postgres;
mod runner;
pub(crate) mod sqlite;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loraflow_core::ids::JobId;
pub use loraflow_core::webhook::{Delivery, DeliveryAttempt, DeliveryState};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::error::Result;
use crate::event::{Position, StoredEvent};
use crate::feed::FeedFilter;
use crate::store::Shared;

/// The outbox's checkpoint name.
pub(crate) const WEBHOOKS: &str = "webhooks";

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// The receiver acknowledged it (2xx); the next event of the URL is armed.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Give up on this event; the next event of the URL is armed.
    Abandon,
}

/// One attempt, as the delivery worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    pub after: AfterAttempt,
}

/// Where a page of a job's deliveries ended: list after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryCursor {
    pub sequence: u64,
    pub url: String,
}

impl DeliveryCursor {
    pub fn of(d: &Delivery) -> Self {
        Self {
            sequence: d.sequence,
            url: d.url.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) enum OutboxBackend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Memory(Arc<memory::MemoryOutbox>),
}

/// The outbox's part of the store's shared state.
pub(crate) struct Outbox {
    backend: OutboxBackend,
    /// Bumped when this process queues or re-arms deliveries, to wake the
    /// delivery worker.
    changed: watch::Sender<u64>,
}

impl Outbox {
    pub(crate) fn new(backend: &Backend) -> Self {
        let backend = match backend {
            Backend::Sqlite(p) => OutboxBackend::Sqlite(p.clone()),
            Backend::Postgres(p) => OutboxBackend::Postgres(p.clone()),
            Backend::Memory(..) => OutboxBackend::Memory(Arc::default()),
        };
        Self {
            backend,
            changed: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn checkpoint(&self) -> Result<Position> {
        match &self.backend {
            OutboxBackend::Sqlite(p) => crate::backend::sqlite::checkpoint(p, WEBHOOKS).await,
            OutboxBackend::Postgres(p) => crate::backend::postgres::checkpoint(p, WEBHOOKS).await,
            OutboxBackend::Memory(m) => Ok(m.checkpoint()),
        }
    }

    /// Queue the deliveries `events` (the feed after `from`) make and move
    /// the checkpoint, in one transaction; events at or below the checkpoint
    /// found there are skipped. Returns the checkpoint after it and how many
    /// deliveries were queued.
    async fn apply(
        &self,
        from: Position,
        events: &[StoredEvent],
        now: DateTime<Utc>,
    ) -> Result<(Position, usize)> {
        let r = match &self.backend {
            OutboxBackend::Sqlite(p) => sqlite::apply(p, from, events, now).await?,
            OutboxBackend::Postgres(p) => postgres::apply(p, from, events, now).await?,
            OutboxBackend::Memory(m) => m.apply(from, events, now)?,
        };
        if r.1 > 0 {
            self.bump();
        }
        Ok(r)
    }
}

/// A handle on the outbox and the delivery log; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    pub(crate) shared: Arc<Shared>,
}

impl Webhooks {
    fn backend(&self) -> &OutboxBackend {
        &self.shared.outbox.backend
    }

    /// The global position the outbox includes.
    pub async fn position(&self) -> Result<Position> {
        self.shared.outbox.checkpoint().await
    }

    /// Changes each time this process queues deliveries or arms the next
    /// delivery of a URL; deliveries queued by other processes are found by
    /// polling.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.outbox.changed.subscribe()
    }

    /// One batch of the outbox runner: read after `from`, apply. Returns the
    /// checkpoint after it and whether anything was read.
    pub(crate) async fn step(&self, from: Position) -> Result<(Position, bool)> {
        let s = &self.shared;
        let events = s
            .read_feed(from, s.options.projection_batch, &FeedFilter::all())
            .await?;
        self.apply(from, events).await
    }

    /// As [`step`](Self::step), reading as a follower (from the feed's
    /// tail when it can): the runner's step.
    pub(crate) async fn step_followed(&self, from: Position) -> Result<(Position, usize)> {
        let s = &self.shared;
        let (events, _) = s
            .read_followed(from, s.options.projection_batch, &FeedFilter::all())
            .await?;
        let read = events.len();
        Ok((self.apply(from, events).await?.0, read))
    }

    async fn apply(&self, from: Position, events: Vec<StoredEvent>) -> Result<(Position, bool)> {
        let s = &self.shared;
        if events.is_empty() {
            return Ok((from, false));
        }
        let (cp, _) = s
            .outbox
            .apply(from, &events, s.services.clock.now())
            .await?;
        Ok((cp, true))
    }

    /// Queue deliveries for every readable event now, without a runner.
    /// Returns the outbox's position.
    pub async fn catch_up(&self) -> Result<Position> {
        let mut from = self.position().await?;
        loop {
            let (cp, any) = self.step(from).await?;
            if !any {
                return Ok(cp);
            }
            from = cp;
        }
    }

    /// Start the runner that fills the outbox from the feed; it stops when
    /// `shutdown` is cancelled. Several processes may each run one on a
    /// shared database.
    pub fn start_outbox(&self, shutdown: CancellationToken) -> JoinHandle<Result<()>> {
        tokio::spawn(runner::run(self.clone(), shutdown))
    }

    /// Armed deliveries due at `now`, earliest first, at most `limit`: at
    /// most one per subscription, the earliest pending event of its URL.
    pub async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
        match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::due(p, now, limit).await,
            OutboxBackend::Postgres(p) => postgres::due(p, now, limit).await,
            OutboxBackend::Memory(m) => Ok(m.due(now, limit)),
        }
    }

    /// When the earliest armed delivery is due (a claimed one: when its
    /// claim ends), or `None` when nothing is pending.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::next_due(p).await,
            OutboxBackend::Postgres(p) => postgres::next_due(p).await,
            OutboxBackend::Memory(m) => Ok(m.next_due()),
        }
    }

    /// Take `delivery` (as returned by [`due`](Self::due)) for an attempt:
    /// its next attempt moves to `until`, so nobody else takes it before
    /// then. `false` when another worker took or recorded it meanwhile.
    pub async fn claim(&self, delivery: &Delivery, until: DateTime<Utc>) -> Result<bool> {
        match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::claim(p, delivery, until).await,
            OutboxBackend::Postgres(p) => postgres::claim(p, delivery, until).await,
            OutboxBackend::Memory(m) => Ok(m.claim(delivery, until)),
        }
    }

    /// Record an attempt of a pending delivery and its new state, in one
    /// transaction; delivered or abandoned, the URL's next pending event is
    /// armed at `record.at`. `false` (nothing written) when the delivery is
    /// no longer pending.
    pub async fn record(&self, delivery: &Delivery, record: &AttemptRecord) -> Result<bool> {
        let recorded = match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::record(p, delivery, record).await?,
            OutboxBackend::Postgres(p) => postgres::record(p, delivery, record).await?,
            OutboxBackend::Memory(m) => m.record(delivery, record),
        };
        if recorded {
            // A retry time moved or the next event was armed: wake workers.
            self.shared.outbox.bump();
        }
        Ok(recorded)
    }

    /// A job's deliveries by event sequence, then URL, after `after`, at
    /// most `limit`.
    pub async fn deliveries(
        &self,
        job: &JobId,
        after: Option<&DeliveryCursor>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::deliveries(p, job, after, limit).await,
            OutboxBackend::Postgres(p) => postgres::deliveries(p, job, after, limit).await,
            OutboxBackend::Memory(m) => Ok(m.deliveries(job, after, limit)),
        }
    }

    /// The attempts for a job's events with sequences in `sequences`, by
    /// sequence, URL, then attempt.
    pub async fn attempts(
        &self,
        job: &JobId,
        sequences: RangeInclusive<u64>,
    ) -> Result<Vec<DeliveryAttempt>> {
        match self.backend() {
            OutboxBackend::Sqlite(p) => sqlite::attempts(p, job, sequences).await,
            OutboxBackend::Postgres(p) => postgres::attempts(p, job, sequences).await,
            OutboxBackend::Memory(m) => Ok(m.attempts(job, sequences)),
        }
    }
}

/// Microseconds since the epoch, as the tables keep times.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
}
