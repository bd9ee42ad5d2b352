//! `ExecutorService`: what workers call. Each executor's token allows it to
//! speak only for itself; steps are pulled, never pushed, so a GPU machine
//! needs no open port.

use loraflow_proto::convert::assignment::{LeaseTimes, assignment_to_wire};
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::executor_service_server::ExecutorService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth::{Auth, check_executor};
use super::status::to_status;
use crate::engine::Engine;

pub struct Executors {
    pub engine: Engine,
    pub auth: Auth,
    /// The longest a poll may wait.
    pub max_poll: std::time::Duration,
}

fn bad(v: loraflow_core::validation::Violations) -> Status {
    to_status(crate::Error::InvalidArgument(v), None)
}

/// A leased step as the wire carries it.
fn wire(p: crate::engine::Polled) -> pb::StepAssignment {
    assignment_to_wire(
        p.assignment,
        LeaseTimes {
            deadline: p.lease.deadline,
            close_by: p.lease.close_by,
            heartbeat_timeout: p.lease.heartbeat_timeout,
        },
    )
}

#[tonic::async_trait]
impl ExecutorService for Executors {
    async fn register_executor(
        &self,
        req: Request<pb::RegisterExecutorRequest>,
    ) -> Result<Response<pb::RegisterExecutorResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let instance = req.get_ref().instance().map_err(bad)?;
        let (id, caps) = req.into_inner().into_domain().map_err(bad)?;
        check_executor(&caller, &id)?;
        tracing::info!(executor = %id, instance = ?instance, kinds = ?caps.kinds, gpu = caps.gpu, "executor registered");
        let reg = match instance {
            Some(instance) => {
                self.engine
                    .register_instance(id, instance, caps)
                    .instrument(tracing::info_span!("grpc", method = "RegisterExecutor"))
                    .await
            }
            None => self.engine.register_executor(id, caps),
        }
        .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::RegisterExecutorResponse::new(
            reg.heartbeat_interval,
            reg.poll_timeout,
        )))
    }

    async fn poll_step(
        &self,
        req: Request<pb::PollStepRequest>,
    ) -> Result<Response<pb::PollStepResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let (id, wait) = req.get_ref().parse(self.max_poll).map_err(bad)?;
        check_executor(&caller, &id)?;
        let polled = self
            .engine
            .poll_step(&id, wait)
            .instrument(tracing::debug_span!("grpc", method = "PollStep", executor = %id))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::PollStepResponse {
            assignment: polled.map(wire),
        }))
    }

    async fn poll_steps(
        &self,
        req: Request<pb::PollStepsRequest>,
    ) -> Result<Response<pb::PollStepsResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let (id, wait, max) = req.get_ref().parse(self.max_poll).map_err(bad)?;
        check_executor(&caller, &id)?;
        let polled = self
            .engine
            .poll_steps(&id, max, wait)
            .instrument(tracing::debug_span!("grpc", method = "PollSteps", executor = %id, max))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::PollStepsResponse {
            assignments: polled.into_iter().map(wire).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let call = req.into_inner().into_call().map_err(bad)?;
        check_executor(&caller, &call.executor_id)?;
        let reply = self
            .engine
            .heartbeat(
                &call.executor_id,
                &call.job_id,
                &call.command.lease_id,
                call.command.progress,
            )
            .instrument(tracing::debug_span!("grpc", method = "Heartbeat", job = %call.job_id))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::HeartbeatResponse {
            cancel: reply.cancel,
            save_now: reply.save_now,
            sample_now: reply.sample_now,
            lease_deadline: reply
                .lease_deadline
                .map(loraflow_proto::convert::time::timestamp),
            sample: reply.sample.map(Into::into),
        }))
    }

    async fn complete_step(
        &self,
        req: Request<pb::CompleteStepRequest>,
    ) -> Result<Response<pb::CompleteStepResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let call = req.into_inner().into_command().map_err(bad)?;
        check_executor(&caller, &call.executor_id)?;
        let leased = self
            .engine
            .complete_step(
                &call.executor_id,
                &call.job_id,
                call.command,
                call.lease_next,
            )
            .instrument(tracing::info_span!("grpc", method = "CompleteStep", job = %call.job_id))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::CompleteStepResponse {
            assignments: leased.into_iter().map(wire).collect(),
        }))
    }

    async fn fail_step(
        &self,
        req: Request<pb::FailStepRequest>,
    ) -> Result<Response<pb::FailStepResponse>, Status> {
        let caller = self.auth.executor(&req)?;
        let call = req.into_inner().into_command().map_err(bad)?;
        check_executor(&caller, &call.executor_id)?;
        let leased = self
            .engine
            .fail_step(
                &call.executor_id,
                &call.job_id,
                call.command,
                call.lease_next,
            )
            .instrument(tracing::info_span!("grpc", method = "FailStep", job = %call.job_id))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::FailStepResponse {
            assignments: leased.into_iter().map(wire).collect(),
        }))
    }
}
