//! A whole audit log — every event in feed order, every job's head, the
//! signed feed checkpoints — read from a live store or from an export, and
//! its verification with the public keys an auditor trusts.

use std::collections::{BTreeMap, HashMap};

use loraflow_core::ids::JobId;
use loraflow_store::{
    ChainFault, Checkpoint, Depth, Head, Keyring, Position, RawEvent, Store, verify_checkpoints,
    verify_job,
};
use serde::Serialize;

/// Events (feed order), heads and checkpoints of one store.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    pub events: Vec<RawEvent>,
    pub heads: Vec<Head>,
    pub checkpoints: Vec<Checkpoint>,
}

/// One thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The job, or `None` for a feed checkpoint.
    pub job: Option<JobId>,
    pub position: Position,
    pub sequence: Option<u64>,
    /// A [`ChainFault`] in words, or `checkpoint`.
    pub kind: String,
    /// The fault itself, for jobs.
    #[serde(skip)]
    pub fault: Option<ChainFault>,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.job, self.sequence) {
            (Some(job), Some(seq)) => write!(
                f,
                "job {job}: {} at position {} (sequence {seq}): {}",
                self.kind, self.position, self.detail
            ),
            _ => write!(
                f,
                "feed checkpoint at position {}: {}",
                self.position, self.detail
            ),
        }
    }
}

/// What verifying a log found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogReport {
    pub jobs: usize,
    pub events: usize,
    pub checkpoints: usize,
    /// Jobs first (by their first bad position), then checkpoints.
    pub problems: Vec<Problem>,
}

impl LogReport {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Read the whole log of `store`. Each job's events and head are one
/// consistent read: a job whose head and feed disagree (it was written
/// while the feed was read) is read again on its own.
pub async fn collect(store: &Store) -> loraflow_store::Result<AuditLog> {
    let feed = store.raw_feed(None).await?;
    let heads = store.heads().await?;
    let mut by_job: BTreeMap<JobId, Vec<RawEvent>> = BTreeMap::new();
    for e in feed {
        by_job.entry(e.job_id.clone()).or_default().push(e);
    }
    let mut head_of: HashMap<JobId, Head> = heads
        .into_iter()
        .map(|h| (JobId::new(h.job_id.clone()), h))
        .collect();
    let jobs: Vec<JobId> = by_job.keys().chain(head_of.keys()).cloned().collect();
    for job in jobs {
        let last = by_job
            .get(&job)
            .and_then(|e| e.iter().map(|e| e.sequence).max());
        let head = head_of.get(&job).map(|h| h.sequence);
        if last != head {
            let (events, head) = store.job_log(&job).await?;
            by_job.insert(job.clone(), events);
            match head {
                Some(h) => head_of.insert(job.clone(), h),
                None => head_of.remove(&job),
            };
        }
    }
    let mut events: Vec<RawEvent> = by_job.into_values().flatten().collect();
    events.sort_by_key(|e| e.position);
    let mut heads: Vec<Head> = head_of.into_values().collect();
    heads.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    Ok(AuditLog {
        events,
        heads,
        checkpoints: store.audit_checkpoints().await?,
    })
}

/// Verify every job (chain, head, every signature) and every checkpoint of
/// `log` with `keys`. Unsigned events (written before signing) are
/// reported, never passed.
pub fn verify_log(log: &AuditLog, keys: &Keyring) -> LogReport {
    let mut by_job: BTreeMap<&JobId, Vec<RawEvent>> = BTreeMap::new();
    for e in &log.events {
        by_job.entry(&e.job_id).or_default().push(e.clone());
    }
    let heads: HashMap<&str, &Head> = log.heads.iter().map(|h| (h.job_id.as_str(), h)).collect();
    let head_only: Vec<JobId> = log
        .heads
        .iter()
        .map(|h| JobId::new(h.job_id.clone()))
        .filter(|j| !by_job.contains_key(j))
        .collect();
    let mut problems = Vec::new();
    let mut jobs = 0;
    for (job, mut events) in by_job
        .into_iter()
        .map(|(j, e)| (j.clone(), e))
        .chain(head_only.into_iter().map(|j| (j, Vec::new())))
    {
        jobs += 1;
        events.sort_by_key(|e| e.sequence);
        let report = verify_job(
            &job,
            &events,
            heads.get(job.as_str()).copied(),
            keys,
            Depth::Full,
            None,
        );
        if let Some(p) = report.first_problem() {
            problems.push(Problem {
                job: Some(job),
                position: p.position,
                sequence: Some(p.sequence),
                kind: p.fault.to_string(),
                fault: Some(p.fault),
                detail: p.detail,
            });
        }
    }
    problems.sort_by_key(|p| p.position);
    problems.extend(
        verify_checkpoints(&log.events, &log.checkpoints, keys)
            .into_iter()
            .map(|c| Problem {
                job: None,
                position: c.position,
                sequence: None,
                kind: "checkpoint".into(),
                fault: None,
                detail: c.detail,
            }),
    );
    LogReport {
        jobs,
        events: log.events.len(),
        checkpoints: log.checkpoints.len(),
        problems,
    }
}
