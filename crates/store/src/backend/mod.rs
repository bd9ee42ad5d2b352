//! The three backends behind one enum: what the store needs besides the
//! cqrs-es repository (the feed, views, projection transactions, migrations).
//!
//! - [`sqlite`]: a file (or memory) database through sqlx, next to sqlite-es.
//! - [`postgres`]: PostgreSQL through sqlx, next to postgres-es.
//! - [`memory`]: the in-process log and views.

pub(crate) mod memory;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::sync::Arc;

use cqrs_es::Aggregate;
use loraflow_core::ids::JobId;
use loraflow_core::job::TrainingJob;
use loraflow_core::views::{JobListFilter, JobStatus, QueuedStep};
use sqlx::{PgPool, SqlitePool};

use crate::chain::{Checkpoint, Head};
use crate::error::Result;
use crate::event::{Position, RawEvent, StoredEvent};
use crate::feed::FeedFilter;
use crate::views::ListCursor;

pub(crate) const AGGREGATE: &str = <TrainingJob as Aggregate>::TYPE;

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Memory(Arc<memory::MemoryLog>, Arc<memory::MemoryViews>),
}

impl Backend {
    /// Events after `after`, in feed order, at most `limit`.
    pub(crate) async fn read_events(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<Vec<RawEvent>> {
        match self {
            Self::Sqlite(p) => sqlite::read_events(p, after, limit, filter).await,
            Self::Postgres(p) => postgres::read_events(p, after, limit, filter).await,
            Self::Memory(log, _) => Ok(log.read(AGGREGATE, after, limit, filter)),
        }
    }

    /// The position of the last event a reader can see now.
    pub(crate) async fn head(&self) -> Result<Position> {
        match self {
            Self::Sqlite(p) => sqlite::head(p).await,
            Self::Postgres(p) => postgres::head(p).await,
            Self::Memory(log, _) => Ok(log.head()),
        }
    }

    /// The position of the last event committed, whether or not a reader
    /// can see it yet (on PostgreSQL a transaction still open may hold a
    /// lower position that the feed waits for).
    pub(crate) async fn written(&self) -> Result<Position> {
        match self {
            Self::Sqlite(p) => sqlite::head(p).await,
            Self::Postgres(p) => postgres::written(p).await,
            Self::Memory(log, _) => Ok(log.head()),
        }
    }

    /// The events at or before `upto` of the jobs that have not ended (the
    /// `open_jobs` index), in feed order. The memory backend scans its log.
    pub(crate) async fn open_job_events(&self, upto: Position) -> Result<Vec<RawEvent>> {
        match self {
            Self::Sqlite(p) => sqlite::open_job_events(p, upto).await,
            Self::Postgres(p) => postgres::open_job_events(p, upto).await,
            Self::Memory(log, _) => Ok(log.open_job_events(AGGREGATE, upto)),
        }
    }

    /// A job's events as stored, in sequence order.
    pub(crate) async fn job_events(&self, job: &JobId) -> Result<Vec<RawEvent>> {
        match self {
            Self::Sqlite(p) => sqlite::job_events(p, job).await,
            Self::Postgres(p) => postgres::job_events(p, job).await,
            Self::Memory(log, _) => Ok(log.job_events(AGGREGATE, job)),
        }
    }

    /// A job's events (in sequence order) and its head, in one snapshot.
    pub(crate) async fn job_log(&self, job: &JobId) -> Result<JobLog> {
        match self {
            Self::Sqlite(p) => sqlite::job_log(p, AGGREGATE, job.as_str()).await,
            Self::Postgres(p) => postgres::job_log(p, AGGREGATE, job.as_str()).await,
            Self::Memory(log, _) => Ok(log.job_log(AGGREGATE, job)),
        }
    }

    /// Every job's head, by job id.
    pub(crate) async fn heads(&self) -> Result<Vec<Head>> {
        match self {
            Self::Sqlite(p) => sqlite::heads(p).await,
            Self::Postgres(p) => postgres::heads(p).await,
            Self::Memory(log, _) => Ok(log.heads()),
        }
    }

    /// The feed checkpoints, oldest first.
    pub(crate) async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        match self {
            Self::Sqlite(p) => sqlite::checkpoints(p).await,
            Self::Postgres(p) => postgres::checkpoints(p).await,
            Self::Memory(log, _) => Ok(log.checkpoints()),
        }
    }

    /// Store a checkpoint (one at a position already taken is kept as it is).
    pub(crate) async fn insert_audit_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        match self {
            Self::Sqlite(p) => sqlite::insert_checkpoint(p, c).await,
            Self::Postgres(p) => postgres::insert_checkpoint(p, c).await,
            Self::Memory(log, _) => {
                log.insert_checkpoint(c.clone());
                Ok(())
            }
        }
    }

    pub(crate) async fn checkpoint(&self, name: &str) -> Result<Position> {
        match self {
            Self::Sqlite(p) => sqlite::checkpoint(p, name).await,
            Self::Postgres(p) => postgres::checkpoint(p, name).await,
            Self::Memory(_, v) => Ok(v.checkpoint(name)),
        }
    }

    /// Fold `events` (the feed read after `from`) into the views and move the
    /// checkpoint `name`, in one transaction. Events at or below the
    /// checkpoint found in that transaction are skipped, so two runners never
    /// apply one twice; a checkpoint below `from` (the views were reset
    /// meanwhile) applies nothing, since the batch would leave a hole.
    /// Returns the checkpoint after the transaction.
    /// `written`: the statuses this process last wrote (see
    /// [`crate::projection::Written`]), kept up to date.
    pub(crate) async fn apply_views(
        &self,
        name: &str,
        from: Position,
        events: &[StoredEvent],
        written: &mut crate::projection::Written,
    ) -> Result<Position> {
        match self {
            Self::Sqlite(p) => sqlite::apply_views(p, name, from, events, written).await,
            Self::Postgres(p) => postgres::apply_views(p, name, from, events, written).await,
            Self::Memory(_, v) => Ok(v.apply(name, from, events)),
        }
    }

    /// Empty the views and set the checkpoint to 0, in one transaction.
    pub(crate) async fn reset_views(&self, name: &str) -> Result<()> {
        match self {
            Self::Sqlite(p) => sqlite::reset_views(p, name).await,
            Self::Postgres(p) => postgres::reset_views(p, name).await,
            Self::Memory(_, v) => {
                v.reset(name);
                Ok(())
            }
        }
    }

    pub(crate) async fn job_status(&self, job: &JobId) -> Result<Option<JobStatus>> {
        match self {
            Self::Sqlite(p) => sqlite::job_status(p, job).await,
            Self::Postgres(p) => postgres::job_status(p, job).await,
            Self::Memory(_, v) => Ok(v.job_status(job)),
        }
    }

    /// Jobs matching `filter` in list order, after `after`, at most `limit`.
    pub(crate) async fn list_jobs(
        &self,
        filter: &JobListFilter,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<Vec<JobStatus>> {
        match self {
            Self::Sqlite(p) => sqlite::list_jobs(p, filter, after, limit).await,
            Self::Postgres(p) => postgres::list_jobs(p, filter, after, limit).await,
            Self::Memory(_, v) => Ok(v.list(filter, after, limit)),
        }
    }

    /// Queued steps in serving order.
    pub(crate) async fn queue(&self) -> Result<Vec<QueuedStep>> {
        match self {
            Self::Sqlite(p) => sqlite::queue(p).await,
            Self::Postgres(p) => postgres::queue(p).await,
            Self::Memory(_, v) => Ok(v.queue()),
        }
    }
}

/// The event types after which a job has no more events (see
/// `JobEvent::ends_job`): a commit holding one takes the job out of the
/// `open_jobs` index.
pub(crate) const ENDING_EVENTS: [&str; 4] =
    ["JobPublished", "JobFailed", "JobCancelled", "JobRejected"];

/// What a commit does to the `open_jobs` index, written in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenJobs {
    Unchanged,
    /// The job's first event: it enters the index.
    Opens,
    /// The job ended: it leaves the index.
    Closes,
}

impl OpenJobs {
    /// The jobs a group of commits (each one's events and head) puts in
    /// the index, and those it takes out.
    pub(crate) fn of_group<'a>(
        commits: impl IntoIterator<Item = (&'a [cqrs_es::persist::SerializedEvent], &'a Head)>,
    ) -> (Vec<&'a str>, Vec<&'a str>) {
        let (mut opens, mut closes) = (Vec::new(), Vec::new());
        for (events, head) in commits {
            match Self::of(events) {
                Self::Unchanged => {}
                Self::Opens => opens.push(head.job_id.as_str()),
                Self::Closes => closes.push(head.job_id.as_str()),
            }
        }
        (opens, closes)
    }

    pub(crate) fn of(events: &[cqrs_es::persist::SerializedEvent]) -> Self {
        if events
            .iter()
            .any(|e| ENDING_EVENTS.contains(&e.event_type.as_str()))
        {
            Self::Closes
        } else if events.iter().any(|e| e.sequence == 1) {
            Self::Opens
        } else {
            Self::Unchanged
        }
    }
}

/// A write's error as cqrs-es wants it: a taken key (another writer got the
/// sequence first) is the optimistic-lock conflict, as in sqlite-es and
/// postgres-es.
pub(crate) fn persistence_error(e: sqlx::Error) -> cqrs_es::persist::PersistenceError {
    use cqrs_es::persist::PersistenceError;
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => PersistenceError::ConnectionError(Box::new(e)),
        e => PersistenceError::UnknownError(Box::new(e)),
    }
}

/// Label keys a job can carry (see `JobSpec` validation); any other key can
/// match no job, and is kept out of SQL JSON paths.
pub(crate) fn plain_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Whether a connection comes back to the pool inside a transaction that
/// nobody owns any more, as far as sqlx knows. A future dropped while its
/// `BEGIN` ran (a cancelled request, an aborted task) leaves it so: on
/// SQLite the write lock stays taken and every other writer waits out its
/// busy timeout and fails with "database is locked"; on PostgreSQL the next
/// caller's writes would run inside it and never commit. Such a connection
/// is closed, which rolls back (and releases the lock), instead of reused.
pub(crate) fn abandoned(conn: &impl sqlx::Connection) -> bool {
    conn.is_in_transaction()
}

/// A job's events and head as one read returns them.
#[derive(Debug, Default)]
pub(crate) struct JobLog {
    pub events: Vec<RawEvent>,
    pub head: Option<Head>,
}

/// One row of the job-log read: (0, sequence, position, type, version,
/// payload, metadata) for an event, (1, sequence, 0, link, key id, sig, '')
/// for the head.
pub(crate) type LogRow = (i64, i64, i64, String, String, String, String);

/// Rows of the job-log read as events and head. A payload or metadata that
/// is not JSON (edited by hand) is kept as a JSON string, so that the chain
/// check reports the event as edited instead of the read failing.
pub(crate) fn log_from_rows(job: &str, rows: Vec<LogRow>) -> Result<JobLog> {
    let mut log = JobLog::default();
    let json =
        |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    for (kind, sequence, position, a, b, c, d) in rows {
        if kind == 1 {
            log.head = Some(head_from_row((job.to_owned(), sequence, a, b, c)));
        } else {
            log.events.push(RawEvent {
                position: position as Position,
                job_id: JobId::new(job),
                sequence: sequence as u64,
                event_type: a,
                event_version: b,
                payload: json(c),
                metadata: json(d),
            });
        }
    }
    Ok(log)
}

pub(crate) fn head_from_row(
    (job_id, sequence, link, key_id, sig): (String, i64, String, String, String),
) -> Head {
    Head {
        job_id,
        sequence: sequence as u64,
        link,
        key_id,
        sig,
    }
}

pub(crate) fn checkpoint_from_row(
    (position, root, key_id, sig, signed_at): (i64, String, String, String, String),
) -> Checkpoint {
    Checkpoint {
        position: position as Position,
        root,
        key_id,
        sig,
        signed_at,
    }
}
