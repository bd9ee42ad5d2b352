//! Audit replay: re-apply a job's stored events one by one, showing the
//! state after each, and verify its chain, head and every signature. An
//! edited, removed, reordered or unsigned event, a cut tail or a bad
//! signature is reported at the first position where it shows.

use chrono::{DateTime, Utc};
use loraflow_core::ids::JobId;
use loraflow_core::job::{JobEvent, JobState, TrainingJob, upcast::upcasters};
use loraflow_store::{ChainError, ChainReport, Depth, Keyring, Position, Store};
use serde::Serialize;

/// One event as replayed.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayedEvent {
    pub position: Position,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: Option<DateTime<Utc>>,
    /// The payload as stored.
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    /// The job's state after applying this event; `None` when the payload
    /// no longer reads as an event (it was damaged).
    pub state_after: Option<JobState>,
}

/// The result of an audit.
#[derive(Debug)]
pub struct Audit {
    pub job_id: JobId,
    pub events: Vec<ReplayedEvent>,
    /// What verifying the chain, the head and every signature found.
    pub report: ChainReport,
    /// Events whose payload could not be read, with why.
    pub unreadable: Vec<(Position, String)>,
    /// The job as rebuilt from its readable events.
    pub job: TrainingJob,
}

impl Audit {
    /// True when every event is signed, the chain and head verify, and
    /// every event reads.
    pub fn is_intact(&self) -> bool {
        self.report.is_valid() && self.unreadable.is_empty()
    }

    /// The first problem of the chain (an unsigned prefix first).
    pub fn chain_problem(&self) -> Option<ChainError> {
        self.report.first_problem()
    }

    /// The position of the first event that fails the audit.
    pub fn first_tampered(&self) -> Option<Position> {
        let chain = self.chain_problem().map(|e| e.position);
        let unreadable = self.unreadable.first().map(|(p, _)| *p);
        chain.into_iter().chain(unreadable).min()
    }

    /// Why the audit fails, for people: the kind and the detail at the
    /// first bad position.
    pub fn verdict(&self) -> Option<String> {
        let position = self.first_tampered()?;
        Some(match self.chain_problem() {
            Some(e) if e.position == position => format!(
                "{} at position {position} (sequence {}): {}",
                e.fault, e.sequence, e.detail
            ),
            _ => {
                let why = self
                    .unreadable
                    .iter()
                    .find(|(p, _)| *p == position)
                    .map(|(_, why)| why.clone())
                    .unwrap_or_default();
                format!("unreadable event at position {position}: {why}")
            }
        })
    }
}

/// Replay and verify one job from `store` with the store's own keys.
/// `Ok(None)` if the store has neither an event nor a head of that job.
pub async fn audit_job(store: &Store, job_id: &JobId) -> loraflow_store::Result<Option<Audit>> {
    audit_job_with(store, job_id, store.keyring()).await
}

/// [`audit_job`] with the public keys an auditor trusts.
pub async fn audit_job_with(
    store: &Store,
    job_id: &JobId,
    keys: &Keyring,
) -> loraflow_store::Result<Option<Audit>> {
    let (raw, head) = store.job_log(job_id).await?;
    if raw.is_empty() && head.is_none() {
        return Ok(None);
    }
    let report = loraflow_store::verify_job(job_id, &raw, head.as_ref(), keys, Depth::Full, None);
    let upcasters = upcasters();
    let mut job = TrainingJob::default();
    let mut events = Vec::with_capacity(raw.len());
    let mut unreadable = Vec::new();
    for r in &raw {
        let (recorded_at, state_after) = match r.to_stored(&upcasters) {
            Ok(stored) => {
                cqrs_apply(&mut job, stored.payload);
                (Some(stored.recorded_at), job.state())
            }
            Err(e) => {
                unreadable.push((r.position, e.to_string()));
                (None, None)
            }
        };
        events.push(ReplayedEvent {
            position: r.position,
            sequence: r.sequence,
            event_type: r.event_type.clone(),
            event_version: r.event_version.clone(),
            recorded_at,
            payload: r.payload.clone(),
            metadata: r.metadata.clone(),
            state_after,
        });
    }
    Ok(Some(Audit {
        job_id: job_id.clone(),
        events,
        report,
        unreadable,
        job,
    }))
}

fn cqrs_apply(job: &mut TrainingJob, event: JobEvent) {
    cqrs_es::Aggregate::apply(job, event);
}
