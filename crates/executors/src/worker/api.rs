//! The executor protocol as a worker sees it. The engine implements it
//! in-process; the gRPC client implements it for workers on other machines.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use loraflow_core::executor::{Capabilities, StepAssignment, StepOutput};
use loraflow_core::ids::{ExecutorId, InstanceId, LeaseId};
use loraflow_core::job::{StepError, StepProgress};

/// How the server wants the worker to pace itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub heartbeat_interval: Duration,
    pub poll_timeout: Duration,
}

/// What the server answers a heartbeat with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeartbeatReply {
    /// Stop the step: the job was cancelled or the lease is no longer ours.
    pub cancel: bool,
    pub save_now: bool,
    pub sample_now: bool,
    /// With `sample_now`: the settings the request changes, if any.
    pub sample: Option<loraflow_core::sampling::SampleOverrides>,
    pub lease_deadline: Option<DateTime<Utc>>,
}

/// Why a protocol call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The server cannot be reached or is overloaded; retry with backoff.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The server does not know this executor (it restarted): register again.
    #[error("executor {0} is not registered")]
    UnknownExecutor(ExecutorId),
    /// The lease is gone (expired, cancelled, completed elsewhere): stop the step.
    #[error("lease {lease_id} is no longer held: {reason}")]
    LeaseLost { lease_id: LeaseId, reason: String },
    /// The server refused the call for good (bad token, invalid output).
    #[error("refused: {0}")]
    Rejected(String),
    /// The message was over the server's size limit (`RESOURCE_EXHAUSTED`
    /// on a completion): sending it again cannot help.
    #[error("the message is too large for the server: {0}")]
    TooLarge(String),
}

#[async_trait]
pub trait WorkerApi: Send + Sync + 'static {
    /// Register `instance`, this process of `executor`. A new process ends
    /// the leases of the executor's earlier ones (their steps are retried at
    /// once); the same process registering again keeps its leases.
    async fn register(
        &self,
        executor: &ExecutorId,
        instance: &InstanceId,
        capabilities: &Capabilities,
    ) -> Result<Registration, ApiError>;

    /// Wait up to `wait` for a step; `None` if none came.
    async fn poll(
        &self,
        executor: &ExecutorId,
        wait: Duration,
    ) -> Result<Option<StepAssignment>, ApiError>;

    /// Whether [`poll_many`](Self::poll_many) leases several steps per
    /// call: the worker then keeps one poll going for all its free slots,
    /// else one per slot.
    fn leases_several(&self) -> bool {
        false
    }

    /// Wait up to `wait` for steps and lease up to `max` of them at once
    /// (the worker's free slots); empty if none came. By default one
    /// [`poll`](Self::poll), for an API that leases one step per call.
    async fn poll_many(
        &self,
        executor: &ExecutorId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let _ = max;
        Ok(self.poll(executor, wait).await?.into_iter().collect())
    }

    async fn heartbeat(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        progress: Option<StepProgress>,
    ) -> Result<HeartbeatReply, ApiError>;

    /// The size of `output` as [`complete`](Self::complete) sends it, in
    /// bytes; by default its JSON encoding (the in-process API).
    fn outcome_size(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: &StepOutput,
    ) -> usize {
        let _ = (executor, step);
        serde_json::to_vec(output).map_or(usize::MAX, |b| b.len())
    }

    /// Report a step's success, and lease up to `lease_next` steps in the
    /// same call (the slots free once this one is; 0: none): the steps
    /// leased, which the worker must run. Never waits for work. Idempotent
    /// by lease: a repeat after a lost answer is harmless (but leases
    /// nothing the lost answer carried: ask for none when repeating).
    async fn complete_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: StepOutput,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError>;

    /// Report a step's failure; `lease_next` as for
    /// [`complete_leasing`](Self::complete_leasing).
    async fn fail_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        error: StepError,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError>;

    /// Report a step's success, leasing nothing.
    async fn complete(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: StepOutput,
    ) -> Result<(), ApiError> {
        self.complete_leasing(executor, step, output, 0)
            .await
            .map(drop)
    }

    /// Report a step's failure, leasing nothing.
    async fn fail(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        error: StepError,
    ) -> Result<(), ApiError> {
        self.fail_leasing(executor, step, error, 0).await.map(drop)
    }
}
