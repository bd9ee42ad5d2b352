//! loraflow-store: where jobs live. Event stores for the `TrainingJob`
//! aggregate on SQLite (the embedded default), PostgreSQL (production,
//! shared by several engine processes) and memory (tests and examples); a
//! global, gap-free event feed; and views kept by projections of that feed.
//!
//! Open a [`Store`] from a URL (`sqlite://path/to/loraflow.db`,
//! `sqlite::memory:`, `postgres://...`, `memory:`); it creates its tables.
//! [`Store::execute`] runs a command and tells the new sequence (the job's
//! etag) and the global position written; [`Store::wait_for`] waits until the
//! views include that position. The views are kept by the runner that
//! [`Store::start_projections`] starts. [`Store::webhooks`] is the webhook
//! outbox, filled from the feed the same way, and its delivery log.
//!
//! # Modules
//! - [`store`]: `Store`, `execute`, `load`, `history`, projections control.
//! - [`batch`]: `execute_many`, one command on each of several jobs, written together.
//! - [`url`] / [`options`]: how a store is named and opened.
//! - [`error`]: the crate's `Error`, with gRPC codes.
//! - [`event`]: `StoredEvent`, `RawEvent`, positions and metadata keys.
//! - [`chain`]: the audit chain: links, heads, checkpoints, what is signed.
//! - [`verify`]: verifying a job's chain and head; the kinds of tampering.
//! - [`checkpoint`]: feed roots and checking signed checkpoints.
//! - [`keys`]: the Ed25519 signing key, public keys, keyrings.
//! - `audit_log`: the store's audit API (verify a job, heads, checkpoints, export reads).
//! - [`retry`]: which commands are retried on conflict.
//! - [`feed`]: reading and following the global feed; where a reader of
//!   unfinished jobs starts (`Feed::in_flight`, from the open-jobs index).
//! - `notify`: PostgreSQL LISTEN/NOTIFY, which wakes readers in other processes.
//! - [`views`]: job status, job lists with page tokens, the queue.
//! - [`records`]: named JSON records beside the events (registered models, upload sessions).
//! - [`webhooks`]: the webhook outbox (filled from the feed), claims, attempts.
//! - `projection`: the runner that keeps the views.
//! - `repo`: the cqrs-es repositories and the wrapper that writes metadata, links, signatures and heads.
//! - `backend`: SQLite, PostgreSQL and memory specifics (schema, SQL).
//! - `migrate`: versioned schema migrations.
//! - `page_token`: opaque list cursors.

mod audit_log;
mod backend;
pub mod batch;
pub mod chain;
pub mod checkpoint;
pub mod error;
pub mod event;
pub mod feed;
mod group;
pub mod keys;
mod migrate;
mod notify;
pub mod options;
mod page_token;
mod projection;
pub mod records;
mod repo;
pub mod retry;
pub mod store;
pub mod url;
pub mod verify;
pub mod views;
pub mod webhooks;

pub use chain::{Checkpoint, Head};
pub use checkpoint::{CheckpointError, verify_checkpoints};
pub use error::{Error, Result};
pub use event::{Metadata, Position, RawEvent, StoredEvent};
pub use feed::{Feed, FeedFilter};
pub use keys::{AuditKey, KeyError, Keyring, PublicKey};
pub use options::StoreOptions;
pub use records::{Record, Records};
pub use repo::ChainRepository;
pub use store::{Appended, Committed, CommittedEvents, JobCqrs, JobEventStore, LoadedJob, Store};
pub use url::{ACCEPTED_URLS, StoreUrl};
pub use verify::{ChainError, ChainFault, ChainReport, Depth, verify_job};
pub use views::{DEFAULT_PAGE_SIZE, JobListQuery, JobPage, MAX_PAGE_SIZE, Views};

#[cfg(test)]
mod tests;
