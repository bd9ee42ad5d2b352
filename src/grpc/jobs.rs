//! `JobService`: what clients call. The tenant comes from the bearer token;
//! every call is one function of [`crate::api::jobs`] with wire conversions
//! around it.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use loraflow_core::ids::TenantId;
use loraflow_proto::convert::catalogue::parameter_schema;
use loraflow_proto::convert::job::{JobMeta, job_to_wire};
use loraflow_proto::convert::webhook::delivery_to_wire;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_server::JobService;
use tonic::{Request, Response, Status};

use super::auth::Auth;
use super::status::api_status;
use crate::api::jobs as calls;
use crate::api::models;
use crate::api::{Created, Requester, Via};
use crate::engine::{Engine, JobView};

pub struct Jobs {
    pub engine: Engine,
    pub auth: Auth,
    /// The server's shutdown: open `WatchJob` streams end with
    /// `UNAVAILABLE` when it is cancelled, so that clients reconnect (to
    /// this server's successor) rather than hold the old process open.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub(crate) fn job(view: JobView) -> pb::Job {
    job_to_wire(
        &view.status,
        JobMeta {
            queue_position: view.queue_position.map(|p| p as u32),
            eta: view.eta,
            waiting_for: view
                .waiting_for
                .iter()
                .map(|(step, u)| (step.clone(), u.to_string()))
                .collect(),
        },
    )
}

fn record(e: &loraflow_store::StoredEvent) -> Result<pb::JobEventRecord, Status> {
    pb::JobEventRecord::from_event(
        e.position,
        e.sequence,
        &e.job_id,
        &e.payload,
        e.recorded_at,
        e.metadata.clone(),
    )
    .map_err(|err| Status::internal(format!("event {} cannot be encoded: {err}", e.position)))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEventRecord, Status>> + Send>>;

impl Jobs {
    /// The caller of `req`, from its bearer token.
    fn who<T>(&self, req: &Request<T>) -> Result<Requester, Status> {
        Ok(Requester::new(self.auth.tenant(req)?, Via::Grpc))
    }
}

/// A call's answer as a response.
fn answer<T, U>(
    r: Result<T, crate::api::ApiError>,
    wire: impl FnOnce(T) -> U,
) -> Result<Response<U>, Status> {
    r.map(|t| Response::new(wire(t))).map_err(api_status)
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let who = self.who(&req)?;
        let page = calls::webhook_deliveries(&self.engine, &who, req.get_ref()).await;
        answer(page, |page| pb::ListWebhookDeliveriesResponse {
            deliveries: page
                .deliveries
                .iter()
                .map(|d| delivery_to_wire(&d.delivery, &d.attempts))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    }

    async fn create_job(
        &self,
        req: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        let tenant: TenantId = who.tenant.clone();
        let created = calls::create_job(&self.engine, &who, req.into_inner()).await;
        answer(created, |c| match c {
            // AIP-163: the job as it would be created, without an id.
            Created::Valid(spec) => pb::Job {
                tenant: tenant.to_string(),
                state: pb::JobState::Pending as i32,
                warnings: loraflow_core::sampling::warnings(&spec, &spec.params),
                spec: Some(spec.into()),
                ..Default::default()
            },
            Created::Job(view) => job(*view),
        })
    }

    async fn resume_job(
        &self,
        req: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::resume_job(&self.engine, &who, req.get_ref()).await,
            job,
        )
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(calls::get_job(&self.engine, &who, req.get_ref()).await, job)
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = self.who(&req)?;
        let page = calls::list_jobs(&self.engine, &who, req.into_inner()).await;
        answer(page, |page| pb::ListJobsResponse {
            jobs: page.jobs.into_iter().map(job).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = self.who(&req)?;
        let events = calls::watch_job(&self.engine, &who, req.get_ref())
            .await
            .map_err(api_status)?;
        // The engine's stream ends right after the job's last event, so a
        // client following a job learns that it is over. A server shutting
        // down ends it early with UNAVAILABLE instead: not over, reconnect.
        let stopping = self.shutdown.clone();
        let interrupted = futures::stream::once(async move { stopping.is_cancelled() })
            .filter_map(|stopped| async move {
                stopped.then(|| {
                    Err(Status::unavailable(
                        "the server is shutting down; reconnect and resume after the last position you received",
                    ))
                })
            });
        let stream = events
            .map(|item| match item {
                Ok(e) => record(&e),
                Err(err) => Err(Status::unavailable(format!(
                    "reading the event feed failed: {err}"
                ))),
            })
            .take_until(self.shutdown.clone().cancelled_owned())
            .chain(interrupted)
            .boxed();
        Ok(Response::new(stream))
    }

    async fn get_job_history(
        &self,
        req: Request<pb::GetJobHistoryRequest>,
    ) -> Result<Response<pb::GetJobHistoryResponse>, Status> {
        let who = self.who(&req)?;
        let events = calls::job_history(&self.engine, &who, req.get_ref())
            .await
            .map_err(api_status)?;
        let events = events.iter().map(record).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::GetJobHistoryResponse { events }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::cancel_job(&self.engine, &who, req.into_inner()).await,
            job,
        )
    }

    async fn save_now(
        &self,
        req: Request<pb::SaveNowRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::save_now(&self.engine, &who, req.get_ref()).await,
            job,
        )
    }

    async fn sample_now(
        &self,
        req: Request<pb::SampleNowRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::sample_now(&self.engine, &who, req.get_ref()).await,
            job,
        )
    }

    async fn approve_job(
        &self,
        req: Request<pb::ApproveJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::approve_job(&self.engine, &who, req.into_inner()).await,
            job,
        )
    }

    async fn reject_job(
        &self,
        req: Request<pb::RejectJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::reject_job(&self.engine, &who, req.into_inner()).await,
            job,
        )
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        answer(
            calls::retry_job(&self.engine, &who, req.get_ref()).await,
            job,
        )
    }

    async fn get_service_status(
        &self,
        req: Request<pb::GetServiceStatusRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = self.who(&req)?;
        let a = calls::service_status(&self.engine, &who);
        let mut status: pb::ServiceStatus = a.status.into();
        status.dataset_root = a.dataset_root.unwrap_or_default();
        status.tenant = who.tenant.to_string();
        Ok(Response::new(status))
    }

    async fn list_base_models(
        &self,
        req: Request<pb::ListBaseModelsRequest>,
    ) -> Result<Response<pb::ListBaseModelsResponse>, Status> {
        let who = self.who(&req)?;
        answer(models::list_base_models(&self.engine, &who).await, |m| {
            pb::ListBaseModelsResponse {
                base_models: m
                    .catalogue
                    .into_iter()
                    .map(pb::BaseModel::from)
                    .chain(m.own.into_iter().map(pb::BaseModel::from))
                    .collect(),
            }
        })
    }

    async fn register_base_model(
        &self,
        req: Request<pb::RegisterBaseModelRequest>,
    ) -> Result<Response<pb::BaseModel>, Status> {
        let who = self.who(&req)?;
        answer(
            models::register_base_model(&self.engine, &who, req.into_inner()).await,
            pb::BaseModel::from,
        )
    }

    async fn delete_base_model(
        &self,
        req: Request<pb::DeleteBaseModelRequest>,
    ) -> Result<Response<pb::DeleteBaseModelResponse>, Status> {
        let who = self.who(&req)?;
        answer(
            models::delete_base_model(&self.engine, &who, &req.get_ref().name).await,
            |()| pb::DeleteBaseModelResponse {},
        )
    }

    async fn get_parameter_schema(
        &self,
        req: Request<pb::GetParameterSchemaRequest>,
    ) -> Result<Response<pb::GetParameterSchemaResponse>, Status> {
        let who = self.who(&req)?;
        let schema = models::parameter_schema(&self.engine, &who, req.get_ref()).await;
        answer(schema, |s| {
            parameter_schema(&self.engine.catalogue().schema, &s.model, s.engine)
        })
    }

    async fn list_executors(
        &self,
        req: Request<pb::ListExecutorsRequest>,
    ) -> Result<Response<pb::ListExecutorsResponse>, Status> {
        let who = self.who(&req)?;
        let page = calls::list_executors(&self.engine, &who, req.get_ref());
        answer(page, super::fleet::executors_to_wire)
    }
}
