//! Audit replay: re-apply a job's stored events one by one, showing the
//! state after each, and check the hash chain the store writes at commit.
//! An edited, removed or re-ordered event is reported at the first position
//! where the chain breaks.

use chrono::{DateTime, Utc};
use loraflow_core::ids::JobId;
use loraflow_core::job::{JobEvent, JobState, TrainingJob, upcast::upcasters};
use loraflow_store::{ChainError, Position, RawEvent, Store, verify_chain};
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
    /// `Err` names the first event whose chain link or content is wrong.
    pub chain: Result<(), ChainError>,
    /// Events whose payload could not be read, with why.
    pub unreadable: Vec<(Position, String)>,
    /// The job as rebuilt from its readable events.
    pub job: TrainingJob,
}

impl Audit {
    /// True when the chain holds and every event reads.
    pub fn is_intact(&self) -> bool {
        self.chain.is_ok() && self.unreadable.is_empty()
    }

    /// The position of the first event that fails the audit.
    pub fn first_tampered(&self) -> Option<Position> {
        let chain = self.chain.as_ref().err().map(|e| e.position);
        let unreadable = self.unreadable.first().map(|(p, _)| *p);
        chain.into_iter().chain(unreadable).min()
    }
}

/// Replay and verify one job from `store`. `Ok(None)` if the store has no
/// event of that job.
pub async fn audit_job(store: &Store, job_id: &JobId) -> loraflow_store::Result<Option<Audit>> {
    let raw: Vec<RawEvent> = store.raw_history(job_id).await?;
    if raw.is_empty() {
        return Ok(None);
    }
    let chain = verify_chain(&raw);
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
        chain,
        unreadable,
        job,
    }))
}

fn cqrs_apply(job: &mut TrainingJob, event: JobEvent) {
    cqrs_es::Aggregate::apply(job, event);
}
