//! The audit side of loraflow: replaying a job, verifying one job or the
//! whole store, exporting the log for an auditor, and verifying such an
//! export offline with public keys alone. See `docs/audit.md`.
//!
//! - [`replay`]: re-apply a job's events with the state after each, and
//!   verify its chain, head and signatures.
//! - [`keys`]: the `[audit]` section of `loraflow.toml` as keys.
//! - [`log`]: a whole log (events in feed order, heads, checkpoints) read
//!   from a store or an export, and its verification.
//! - [`export`](mod@export): writing and reading an export folder.

pub mod export;
pub mod keys;
pub mod log;
pub mod replay;

pub use export::{ExportSummary, export, read_export};
pub use keys::{ConfiguredKeys, configured_keys};
pub use log::{AuditLog, LogReport, Problem, collect, verify_log};
pub use replay::{Audit, ReplayedEvent, audit_job, audit_job_with};
