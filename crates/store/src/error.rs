//! The one error type of the store. Each variant says how a caller handles it
//! and which gRPC status (`tonic::Code`) it maps to.

use cqrs_es::AggregateError;
use cqrs_es::persist::PersistenceError;
use loraflow_core::ids::JobId;

use crate::event::Position;
use crate::keys::KeyError;
use crate::verify::ChainError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job refused the command; nothing was written. Handle it as the
    /// domain error says (each `loraflow_core::job::Error` variant documents
    /// its code: `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `NOT_FOUND`, ...).
    #[error(transparent)]
    Domain(#[from] loraflow_core::job::Error),

    /// Another writer changed the job between this command's load and its
    /// commit, and the command was not retried (it is not safe to retry, see
    /// [`crate::retry`]) or every retry conflicted too. Nothing was written.
    /// Reload the job and decide again, or let the client retry; `ABORTED`.
    #[error(
        "job {job_id} was changed by another writer ({attempts} attempt(s)); reload it and try again"
    )]
    Conflict { job_id: JobId, attempts: u32 },

    /// The job is not at the sequence (etag) the caller quoted. Nothing was
    /// written. Return the current job to the client; `ABORTED` (AIP-154).
    #[error(
        "job {job_id} is at sequence {actual}, not the expected {expected}; reload it and try again"
    )]
    StaleEtag {
        job_id: JobId,
        expected: u64,
        actual: u64,
    },

    /// The job's history reached the store's limit of events per job.
    /// Nothing was written; the job cannot change any more. `RESOURCE_EXHAUSTED`.
    #[error("job {job_id} has reached the limit of {limit} events per job")]
    HistoryFull { job_id: JobId, limit: u64 },

    /// The database could not be reached (connection refused, pool timeout,
    /// I/O). Retry later with backoff; `UNAVAILABLE`.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),

    /// The database failed a statement. Log it; `INTERNAL`.
    #[error("database error: {0}")]
    Database(#[source] BoxError),

    /// A stored event or view row could not be read back (unknown event
    /// type, malformed JSON, a missing upcaster). Nothing is lost in the
    /// store, but this release cannot read it; `DATA_LOSS` or `INTERNAL`.
    #[error("could not (de)serialize stored data: {0}")]
    Serialization(#[source] BoxError),

    /// The store URL is not one of the accepted forms. Fix the configuration;
    /// `INVALID_ARGUMENT` (it never reaches a client in practice).
    #[error("invalid store url {url:?}: {reason}; accepted forms: {accepted}")]
    InvalidUrl {
        url: String,
        reason: String,
        accepted: &'static str,
    },

    /// A page token that was altered, is from another release, or was issued
    /// for a list with different filters. `INVALID_ARGUMENT`.
    #[error("invalid page token: {reason}")]
    InvalidPageToken { reason: String },

    /// A schema migration failed; the store did not open. `INTERNAL`.
    #[error("schema migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: BoxError,
    },

    /// The views did not reach the position in time. The write is committed;
    /// the caller may read stale views or wait longer; `DEADLINE_EXCEEDED`.
    #[error("views reached position {reached}, not {wanted}, before the deadline")]
    Timeout { wanted: Position, reached: Position },

    /// A job's log does not verify: an event was edited, removed,
    /// reordered or written outside the store, its tail was cut, or a
    /// signature does not verify (the error names the first bad event and
    /// the kind). Nothing was written and the command was not run; the
    /// store has logged it as an error. Do not retry: investigate with
    /// `loraflow audit verify`. `DATA_LOSS` (reason `TAMPERED_LOG`).
    #[error(transparent)]
    TamperedLog(#[from] ChainError),

    /// An audit opened a store that does not exist (a SQLite file that is
    /// not there, a PostgreSQL schema without events); nothing was created.
    /// Fix the store URL; `NOT_FOUND` (the CLI exits 3).
    #[error("the store {url} does not exist ({reason}); check --store or LORAFLOW_STORE")]
    Missing { url: String, reason: String },

    /// The audit signing key could not be read or created. Fix the
    /// configuration (`[audit] signing_key`); `INTERNAL` (it never reaches
    /// a client in practice).
    #[error(transparent)]
    Key(#[from] KeyError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn serialization(e: impl Into<BoxError>) -> Self {
        Self::Serialization(e.into())
    }

    /// Whether the error is worth retrying the same call for later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict { .. })
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(Box::new(e)),
            sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
                Self::Serialization(Box::new(e))
            }
            e => Self::Database(Box::new(e)),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Serialization(Box::new(e))
    }
}

impl From<PersistenceError> for Error {
    fn from(e: PersistenceError) -> Self {
        match e {
            // The caller knows the job; `Store` replaces this with its own `Conflict`.
            PersistenceError::OptimisticLockError => Self::Conflict {
                job_id: JobId::new(""),
                attempts: 1,
            },
            PersistenceError::ConnectionError(e) => Self::Unavailable(e),
            PersistenceError::DeserializationError(e) => Self::Serialization(e),
            PersistenceError::UnknownError(e) => Self::Database(e),
        }
    }
}

impl From<AggregateError<loraflow_core::job::Error>> for Error {
    fn from(e: AggregateError<loraflow_core::job::Error>) -> Self {
        match e {
            AggregateError::UserError(e) => Self::Domain(e),
            AggregateError::AggregateConflict => Self::Conflict {
                job_id: JobId::new(""),
                attempts: 1,
            },
            AggregateError::DatabaseConnectionError(e) => Self::Unavailable(e),
            AggregateError::DeserializationError(e) => Self::Serialization(e),
            AggregateError::UnexpectedError(e) => Self::Database(e),
        }
    }
}
