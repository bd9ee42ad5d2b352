//! Which commands the store retries by itself when they conflict.
//!
//! A conflict means another writer changed the job between this command's
//! load and its commit. Retrying reloads the job and lets the aggregate decide
//! again, so a retried command is never applied against a state it did not
//! check. Still, some commands carry a human's (or a client's) decision made
//! against what they saw; those are handed back as `Conflict` so the caller
//! re-reads and decides again.
//!
//! | command | retried | why |
//! |---|---|---|
//! | `Heartbeat` | yes | progress is a report; a stale lease is refused on retry |
//! | `LeaseStep` (fresh lease id) | yes | the retry re-checks that the step is still queued; a double lease is refused |
//! | `CompleteStep`, `FailStep` | yes | idempotent by lease id; a superseded lease is refused as stale |
//! | `ExpireLease`, `ExpireQueuedStep` | yes | the deadline is checked again against the new state |
//! | `ExpireRestartedLease` | yes | the lease's holder is checked again; an ended lease is refused as stale |
//! | `Cancel` | yes | cancelling twice is a no-op |
//! | `Create`, `Submit` | no | a conflict means someone else created or submitted the job |
//! | `Approve`, `Reject`, `Fail` | no | a person's decision; they should see what changed |
//!
//! Commands executed with an expected sequence (etag) are never retried.

use loraflow_core::job::JobCommand;

/// Whether a conflicting `command` may be retried by the store.
pub fn retry_safe(command: &JobCommand) -> bool {
    match command {
        JobCommand::Heartbeat(_)
        | JobCommand::LeaseStep(_)
        | JobCommand::CompleteStep(_)
        | JobCommand::FailStep(_)
        | JobCommand::ExpireLease(_)
        | JobCommand::ExpireQueuedStep(_)
        | JobCommand::ExpireRestartedLease(_)
        | JobCommand::Cancel(_) => true,
        JobCommand::Create(_)
        | JobCommand::Submit(_)
        | JobCommand::Approve(_)
        | JobCommand::Reject(_)
        | JobCommand::Fail(_) => false,
    }
}
