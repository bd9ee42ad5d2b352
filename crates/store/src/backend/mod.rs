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

    /// A job's events as stored, in sequence order.
    pub(crate) async fn job_events(&self, job: &JobId) -> Result<Vec<RawEvent>> {
        match self {
            Self::Sqlite(p) => sqlite::job_events(p, job).await,
            Self::Postgres(p) => postgres::job_events(p, job).await,
            Self::Memory(log, _) => Ok(log.job_events(AGGREGATE, job)),
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
    pub(crate) async fn apply_views(
        &self,
        name: &str,
        from: Position,
        events: &[StoredEvent],
    ) -> Result<Position> {
        match self {
            Self::Sqlite(p) => sqlite::apply_views(p, name, from, events).await,
            Self::Postgres(p) => postgres::apply_views(p, name, from, events).await,
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
