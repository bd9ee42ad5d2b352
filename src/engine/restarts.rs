//! Executors that come back. A worker names its process (an instance id it
//! makes at start) when it registers. A registration from a new process of
//! an executor means the earlier process is gone, and its leases with it:
//! they end at once (`LeaseExpired`, cause `ExecutorRestarted`) and their
//! steps are queued again without backoff, instead of holding the
//! executor's slots until their heartbeat deadlines pass (minutes, for
//! training). A reconnect of the same process (after a server restart, or a
//! lost connection) keeps its leases.

use std::time::Duration;

use loraflow_core::executor::Capabilities;
use loraflow_core::ids::{ExecutorId, InstanceId, JobId, LeaseId};
use loraflow_core::job::{ExpireRestartedLease, JobCommand};
use loraflow_executors::worker::Registration;

use super::{Engine, system_metadata};
use crate::error::Result;

/// How long a registration waits for the scheduler to read the feed (the
/// leases other replicas wrote, and the expiries written here). A scheduler
/// further behind answers with what it has: a lease it has not read yet
/// expires at its deadline, as before.
const CATCH_UP: Duration = Duration::from_secs(5);

impl Engine {
    /// Register one process (`instance`) of an executor; it may then poll.
    /// Leases the executor holds under any other process end before this
    /// returns, and the scheduler has read their ends, so the new process's
    /// first poll finds their steps queued and its slots free.
    pub async fn register_instance(
        &self,
        id: ExecutorId,
        instance: InstanceId,
        capabilities: Capabilities,
    ) -> Result<Registration> {
        let registration = self.enrol(id.clone(), Some(instance.clone()), capabilities)?;
        self.end_leases_of_earlier_processes(&id, &instance).await?;
        Ok(registration)
    }

    async fn end_leases_of_earlier_processes(
        &self,
        id: &ExecutorId,
        instance: &InstanceId,
    ) -> Result<()> {
        let scheduler = &self.inner.scheduler;
        let head = self.inner.store.feed().head().await?;
        scheduler.wait_for(head, CATCH_UP).await;
        let dead: Vec<(JobId, LeaseId)> = scheduler.read(|s| {
            s.leases_of_other_processes(id, instance)
                .map(|l| (l.job_id.clone(), l.lease_id.clone()))
                .collect()
        });
        let mut last = None;
        for (job, lease) in dead {
            let command = JobCommand::ExpireRestartedLease(ExpireRestartedLease {
                lease_id: lease.clone(),
                executor_id: id.clone(),
                instance: instance.clone(),
            });
            match self
                .inner
                .store
                .execute(&job, command, system_metadata(id.as_str()))
                .await
            {
                Ok(c) => {
                    tracing::info!(
                        executor = %id, %instance, %job, %lease,
                        "the executor restarted: its earlier process's lease ended, the step is queued again"
                    );
                    self.forget(&lease);
                    last = c.position.or(last);
                }
                // The lease ended meanwhile (completed, expired, or ended by
                // another replica that saw the same registration).
                Err(loraflow_store::Error::Domain(e)) => {
                    tracing::debug!(%job, %lease, "lease not ended on restart: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(position) = last {
            scheduler.wait_for(position, CATCH_UP).await;
        }
        Ok(())
    }
}
