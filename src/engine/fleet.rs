//! Executors currently registered with this engine process. Registration is
//! not an event: an executor registers again after a server restart (the
//! protocol tells it to), and its leases live in the jobs' events, each
//! with the executor process (instance) that took it.

use std::collections::BTreeMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use loraflow_core::executor::Capabilities;
use loraflow_core::ids::{ExecutorId, InstanceId, JobId, StepId};

/// One registered executor.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetMember {
    pub executor_id: ExecutorId,
    /// The process that registered last, when it named itself.
    pub instance: Option<InstanceId>,
    pub capabilities: Capabilities,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Steps it holds now (job, step).
    pub leases: Vec<(JobId, StepId)>,
}

#[derive(Debug, Default)]
pub(crate) struct Fleet {
    members: RwLock<BTreeMap<ExecutorId, FleetMember>>,
}

impl Fleet {
    pub fn register(
        &self,
        id: ExecutorId,
        instance: Option<InstanceId>,
        capabilities: Capabilities,
        now: DateTime<Utc>,
    ) {
        self.members.write().expect("fleet lock poisoned").insert(
            id.clone(),
            FleetMember {
                executor_id: id,
                instance,
                capabilities,
                registered_at: now,
                last_seen: now,
                leases: Vec::new(),
            },
        );
    }

    /// The executor's capabilities and process, noting that it was seen.
    pub fn touch(
        &self,
        id: &ExecutorId,
        now: DateTime<Utc>,
    ) -> Option<(Capabilities, Option<InstanceId>)> {
        let mut members = self.members.write().expect("fleet lock poisoned");
        let m = members.get_mut(id)?;
        m.last_seen = now;
        Some((m.capabilities.clone(), m.instance.clone()))
    }

    /// The capabilities of the executors connected at `now`: seen (polling)
    /// within `within`, or holding a lease (`holds_lease`), since a busy
    /// executor runs its step instead of polling. What a queued step's
    /// `waiting_for` is judged against.
    pub fn connected(
        &self,
        now: DateTime<Utc>,
        within: std::time::Duration,
        holds_lease: impl Fn(&ExecutorId) -> bool,
    ) -> Vec<Capabilities> {
        let since = chrono::Duration::from_std(within)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.members
            .read()
            .expect("fleet lock poisoned")
            .values()
            .filter(|m| m.last_seen >= since || holds_lease(&m.executor_id))
            .map(|m| m.capabilities.clone())
            .collect()
    }

    pub fn members(&self) -> Vec<FleetMember> {
        self.members
            .read()
            .expect("fleet lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}
