//! The executor protocol without a network: what in-process executors use.

use std::time::Duration;

use async_trait::async_trait;
use loraflow_core::executor::{Capabilities, StepAssignment, StepOutput};
use loraflow_core::ids::{ExecutorId, InstanceId};
use loraflow_core::job::{self, CompleteStep, FailStep, StepError, StepProgress};
use loraflow_executors::worker::{ApiError, HeartbeatReply, Registration, WorkerApi};

use super::Engine;
use crate::error::Error;

/// [`WorkerApi`] over an [`Engine`] in the same process.
#[derive(Debug, Clone)]
pub struct InProcessApi {
    engine: Engine,
}

impl InProcessApi {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn to_api(e: Error, step: Option<&StepAssignment>) -> ApiError {
    match (e, step) {
        (Error::UnknownExecutor(id), _) => ApiError::UnknownExecutor(id),
        (
            Error::Domain(
                job::Error::StaleLease { .. }
                | job::Error::UnknownLease { .. }
                | job::Error::IllegalTransition { .. },
            ),
            Some(step),
        ) => ApiError::LeaseLost {
            lease_id: step.lease_id.clone(),
            reason: "the lease ended".into(),
        },
        (Error::ShuttingDown, _) => ApiError::Unavailable("the engine is shutting down".into()),
        (
            Error::Store(
                e @ (loraflow_store::Error::Conflict { .. }
                | loraflow_store::Error::Unavailable { .. }
                | loraflow_store::Error::Timeout { .. }),
            ),
            _,
        ) => ApiError::Unavailable(e.to_string()),
        (e, _) => ApiError::Rejected(e.to_string()),
    }
}

#[async_trait]
impl WorkerApi for InProcessApi {
    async fn register(
        &self,
        executor: &ExecutorId,
        instance: &InstanceId,
        capabilities: &Capabilities,
    ) -> Result<Registration, ApiError> {
        self.engine
            .register_instance(executor.clone(), instance.clone(), capabilities.clone())
            .await
            .map_err(|e| to_api(e, None))
    }

    async fn poll(
        &self,
        executor: &ExecutorId,
        wait: Duration,
    ) -> Result<Option<StepAssignment>, ApiError> {
        let polled = self
            .engine
            .poll_step(executor, wait)
            .await
            .map_err(|e| to_api(e, None))?;
        Ok(polled.map(|p| p.assignment))
    }

    fn leases_several(&self) -> bool {
        true
    }

    async fn poll_many(
        &self,
        executor: &ExecutorId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let polled = self
            .engine
            .poll_steps(executor, max, wait)
            .await
            .map_err(|e| to_api(e, None))?;
        Ok(polled.into_iter().map(|p| p.assignment).collect())
    }

    async fn heartbeat(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        progress: Option<StepProgress>,
    ) -> Result<HeartbeatReply, ApiError> {
        self.engine
            .heartbeat(executor, &step.job_id, &step.lease_id, progress)
            .await
            .map_err(|e| to_api(e, Some(step)))
    }

    async fn complete_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: StepOutput,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let command = CompleteStep {
            lease_id: step.lease_id.clone(),
            outputs: output.outputs,
            artifacts: output.artifacts,
            epochs: output.epochs,
        };
        let leased = self
            .engine
            .complete_step(executor, &step.job_id, command, lease_next)
            .await
            .map_err(|e| to_api(e, Some(step)))?;
        Ok(leased.into_iter().map(|p| p.assignment).collect())
    }

    async fn fail_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        error: StepError,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let command = FailStep {
            lease_id: step.lease_id.clone(),
            error,
        };
        let leased = self
            .engine
            .fail_step(executor, &step.job_id, command, lease_next)
            .await
            .map_err(|e| to_api(e, Some(step)))?;
        Ok(leased.into_iter().map(|p| p.assignment).collect())
    }
}
