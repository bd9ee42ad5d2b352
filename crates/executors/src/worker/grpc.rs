//! The executor protocol over gRPC: what `loraflow worker` uses to reach a
//! server. The worker connects out; the GPU machine needs no open port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use loraflow_core::executor::{Capabilities, StepAssignment, StepOutput};
use loraflow_core::ids::{ExecutorId, InstanceId, LeaseId};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::executor_service_client::ExecutorServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use super::api::{ApiError, HeartbeatReply, Registration, WorkerApi};

/// The `ErrorInfo` reason a server gives when it does not know an executor.
pub const UNKNOWN_EXECUTOR: &str = "UNKNOWN_EXECUTOR";

/// A gRPC client of a loraflow server's `ExecutorService`.
#[derive(Debug, Clone)]
pub struct GrpcWorkerApi {
    client: ExecutorServiceClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    /// Whether the server has `PollSteps`; cleared when it answers
    /// UNIMPLEMENTED (a server older than the call), and `PollStep` is
    /// used from then on.
    batch_polls: Arc<AtomicBool>,
}

/// A bad server URL or token.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server URL {url:?}: {message}; use http://host:port")]
    Url { url: String, message: String },
    #[error("the token contains characters that cannot be sent in a header")]
    Token,
}

impl GrpcWorkerApi {
    /// A client for `url` authenticating with the executor's bearer `token`.
    /// The connection is made lazily and re-made after failures, so a worker
    /// may start before its server.
    pub fn connect(url: &str, token: &str) -> Result<Self, ConnectError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ConnectError::Url {
                url: url.into(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(30)));
        let token = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Token)?;
        Ok(Self {
            client: ExecutorServiceClient::new(endpoint.connect_lazy()),
            token,
            batch_polls: Arc::new(AtomicBool::new(true)),
        })
    }

    /// A client that leases one step per poll (`PollStep`) even where the
    /// server has `PollSteps`: for servers known to be older, and to
    /// measure what batches bring.
    pub fn one_step_per_poll(self) -> Self {
        self.batch_polls.store(false, Ordering::Relaxed);
        self
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    }
}

fn reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// What a worker should do about a failed call.
fn classify(status: Status, executor: &ExecutorId, lease: Option<&LeaseId>) -> ApiError {
    let message = status.message().to_owned();
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Aborted => ApiError::Unavailable(format!("{:?}: {message}", status.code())),
        Code::NotFound if reason(&status).as_deref() == Some(UNKNOWN_EXECUTOR) => {
            ApiError::UnknownExecutor(executor.clone())
        }
        Code::NotFound | Code::FailedPrecondition if lease.is_some() => ApiError::LeaseLost {
            lease_id: lease.cloned().expect("checked"),
            reason: message,
        },
        code => ApiError::Rejected(format!("{code:?}: {message}")),
    }
}

fn bad_reply(e: impl std::fmt::Display) -> ApiError {
    ApiError::Rejected(format!(
        "the server sent an answer this worker cannot read: {e}"
    ))
}

#[async_trait]
impl WorkerApi for GrpcWorkerApi {
    async fn register(
        &self,
        executor: &ExecutorId,
        instance: &InstanceId,
        capabilities: &Capabilities,
    ) -> Result<Registration, ApiError> {
        let req = pb::RegisterExecutorRequest {
            executor_id: executor.to_string(),
            capabilities: Some(capabilities.clone().into()),
            instance_id: instance.to_string(),
        };
        let reply = self
            .client
            .clone()
            .register_executor(self.request(req, Some(Duration::from_secs(30))))
            .await
            .map_err(|s| classify(s, executor, None))?
            .into_inner();
        let (heartbeat_interval, poll_timeout) = reply.parse().map_err(bad_reply)?;
        Ok(Registration {
            heartbeat_interval,
            poll_timeout,
        })
    }

    async fn poll(
        &self,
        executor: &ExecutorId,
        wait: Duration,
    ) -> Result<Option<StepAssignment>, ApiError> {
        let req = pb::PollStepRequest {
            executor_id: executor.to_string(),
            wait: Some(wait.try_into().map_err(bad_reply)?),
        };
        // The call may legitimately last `wait`; give the network some slack.
        let reply = self
            .client
            .clone()
            .poll_step(self.request(req, Some(wait + Duration::from_secs(15))))
            .await
            .map_err(|s| classify(s, executor, None))?
            .into_inner();
        reply
            .assignment
            .map(StepAssignment::try_from)
            .transpose()
            .map_err(bad_reply)
    }

    fn leases_several(&self) -> bool {
        self.batch_polls.load(Ordering::Relaxed)
    }

    async fn poll_many(
        &self,
        executor: &ExecutorId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        if !self.batch_polls.load(Ordering::Relaxed) {
            return Ok(self.poll(executor, wait).await?.into_iter().collect());
        }
        let req = pb::PollStepsRequest {
            executor_id: executor.to_string(),
            wait: Some(wait.try_into().map_err(bad_reply)?),
            max_steps: max.clamp(1, loraflow_core::executor::MAX_POLL_STEPS),
        };
        let reply = match self
            .client
            .clone()
            .poll_steps(self.request(req, Some(wait + Duration::from_secs(15))))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::info!("the server has no PollSteps; polling one step at a time");
                self.batch_polls.store(false, Ordering::Relaxed);
                return Ok(self.poll(executor, wait).await?.into_iter().collect());
            }
            Err(s) => return Err(classify(s, executor, None)),
        };
        reply
            .assignments
            .into_iter()
            .map(StepAssignment::try_from)
            .collect::<Result<_, _>>()
            .map_err(bad_reply)
    }

    async fn heartbeat(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        progress: Option<StepProgress>,
    ) -> Result<HeartbeatReply, ApiError> {
        let req = pb::HeartbeatRequest::new(executor, step, progress);
        let reply = self
            .client
            .clone()
            .heartbeat(self.request(req, Some(Duration::from_secs(30))))
            .await
            .map_err(|s| classify(s, executor, Some(&step.lease_id)))?
            .into_inner();
        Ok(HeartbeatReply {
            cancel: reply.cancel,
            save_now: reply.save_now,
            sample_now: reply.sample_now,
            sample: reply.sample.map(Into::into),
            lease_deadline: reply
                .lease_deadline
                .and_then(|t| loraflow_proto::convert::time::datetime(t).ok()),
        })
    }

    fn outcome_size(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: &StepOutput,
    ) -> usize {
        use prost::Message;
        pb::CompleteStepRequest::new(executor, step, output.clone()).encoded_len()
    }

    async fn complete_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        output: StepOutput,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let req = pb::CompleteStepRequest {
            lease_next,
            ..pb::CompleteStepRequest::new(executor, step, output)
        };
        let reply = self
            .client
            .clone()
            .complete_step(self.request(req, Some(Duration::from_secs(60))))
            .await
            .map_err(|s| match s.code() {
                // The server's size limit: resending cannot help.
                Code::ResourceExhausted => ApiError::TooLarge(s.message().to_owned()),
                _ => classify(s, executor, Some(&step.lease_id)),
            })?;
        Ok(leased_with(reply.into_inner().assignments))
    }

    async fn fail_leasing(
        &self,
        executor: &ExecutorId,
        step: &StepAssignment,
        error: StepError,
        lease_next: u32,
    ) -> Result<Vec<StepAssignment>, ApiError> {
        let req = pb::FailStepRequest {
            lease_next,
            ..pb::FailStepRequest::new(executor, step, error)
        };
        let reply = self
            .client
            .clone()
            .fail_step(self.request(req, Some(Duration::from_secs(60))))
            .await
            .map_err(|s| classify(s, executor, Some(&step.lease_id)))?;
        Ok(leased_with(reply.into_inner().assignments))
    }
}

/// The steps leased with an outcome. The outcome is recorded whatever
/// they hold: one this worker cannot read is left to expire (and be
/// retried elsewhere) rather than failing the report.
fn leased_with(assignments: Vec<pb::StepAssignment>) -> Vec<StepAssignment> {
    assignments
        .into_iter()
        .filter_map(|a| {
            StepAssignment::try_from(a)
                .map_err(|e| tracing::warn!("a step leased with the outcome cannot be read: {e}"))
                .ok()
        })
        .collect()
}
