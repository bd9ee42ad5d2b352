//! `JobService`: what clients call. The tenant comes from the bearer token;
//! every call is the engine's job API with wire conversions around it.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use loraflow_core::ids::TenantId;
use loraflow_core::job::JobEvent;
use loraflow_core::views::JobListFilter;
use loraflow_proto::convert::catalogue::parameter_schema;
use loraflow_proto::convert::job::{JobMeta, job_to_wire};
use loraflow_proto::convert::webhook::delivery_to_wire;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_server::JobService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth::Auth;
use super::status::to_status;
use crate::engine::{Engine, JobView};

pub struct Jobs {
    pub engine: Engine,
    pub auth: Auth,
}

fn job(view: JobView) -> pb::Job {
    job_to_wire(
        &view.status,
        JobMeta {
            queue_position: view.queue_position.map(|p| p as u32),
            eta: view.eta,
        },
    )
}

fn bad(v: loraflow_core::validation::Violations) -> Status {
    to_status(crate::Error::InvalidArgument(v), None)
}

fn span(method: &'static str, tenant: &TenantId, job: &str) -> tracing::Span {
    tracing::info_span!("grpc", method, %tenant, job)
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

fn ends_job(e: &JobEvent) -> bool {
    matches!(
        e,
        JobEvent::JobPublished(_)
            | JobEvent::JobFailed(_)
            | JobEvent::JobCancelled(_)
            | JobEvent::JobRejected(_)
    )
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEventRecord, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let r = req.into_inner();
        let (id, page_size) = match (r.job_id(), r.page_size()) {
            (Ok(id), Ok(n)) => (id, n),
            (id, n) => {
                let mut v = id.err().unwrap_or_default();
                v.extend(n.err().unwrap_or_default());
                return Err(bad(v));
            }
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = self
            .engine
            .webhook_deliveries(&tenant, &id, page_size, token)
            .instrument(span("ListWebhookDeliveries", &tenant, id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: page
                .deliveries
                .iter()
                .map(|d| delivery_to_wire(&d.delivery, &d.attempts))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn create_job(
        &self,
        req: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let new = req.into_inner().into_domain(tenant.clone()).map_err(bad)?;
        let new = crate::engine::NewJob {
            spec: new.spec,
            request_id: new.request_id,
        };
        let view = self
            .engine
            .create_job(&tenant, new)
            .instrument(span("CreateJob", &tenant, ""))
            .await
            .map_err(|e| to_status(e, Some("job")))?;
        Ok(Response::new(job(view)))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let id = req.get_ref().job_id().map_err(bad)?;
        let view = self
            .engine
            .get_job(&tenant, &id)
            .instrument(span("GetJob", &tenant, id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let r = req.into_inner();
        let (filter, page_size) = match (r.filter(), r.page_size()) {
            (Ok(f), Ok(n)) => (f, n),
            (f, n) => {
                let mut v = f.err().unwrap_or_default();
                v.extend(n.err().unwrap_or_default());
                return Err(bad(v));
            }
        };
        let filter = JobListFilter {
            tenant: None,
            state: filter.state,
            base_model: filter.base_model,
            engine: filter.engine,
            labels: filter.labels,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let engine = &self.engine;
        async move {
            let page = engine
                .list_jobs(&tenant, filter, page_size as u32, token)
                .await
                .map_err(|e| to_status(e, None))?;
            let mut jobs = Vec::with_capacity(page.jobs.len());
            for summary in page.jobs {
                let view = engine
                    .get_job(&tenant, &summary.job_id)
                    .await
                    .map_err(|e| to_status(e, None))?;
                jobs.push(job(view));
            }
            Ok(Response::new(pb::ListJobsResponse {
                jobs,
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        }
        .instrument(tracing::info_span!("grpc", method = "ListJobs"))
        .await
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let r = req.into_inner();
        let id = loraflow_proto::aip::job_id(&r.job_id).map_err(|v| bad(v.nested("job_id")))?;
        let events = self
            .engine
            .watch(&tenant, &id, r.from_position)
            .instrument(span("WatchJob", &tenant, id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        // The stream ends right after the job's last event, so a client
        // following a job learns that it is over.
        let events = Box::pin(events);
        let stream = futures::stream::unfold(Some(events), |state| async move {
            let mut events = state?;
            let item = match events.next().await? {
                Ok(e) if ends_job(&e.payload) => return Some((record(&e), None)),
                Ok(e) => record(&e),
                Err(err) => Err(Status::unavailable(format!(
                    "reading the event feed failed: {err}"
                ))),
            };
            Some((item, Some(events)))
        })
        .boxed();
        Ok(Response::new(stream))
    }

    async fn get_job_history(
        &self,
        req: Request<pb::GetJobHistoryRequest>,
    ) -> Result<Response<pb::GetJobHistoryResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let id = req.get_ref().job_id().map_err(bad)?;
        let events = self
            .engine
            .history(&tenant, &id)
            .instrument(span("GetJobHistory", &tenant, id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        let events = events.iter().map(record).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::GetJobHistoryResponse { events }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let call = req
            .into_inner()
            .into_command(tenant.as_str())
            .map_err(bad)?;
        let view = self
            .engine
            .cancel(
                &tenant,
                &call.job_id,
                &call.command.reason,
                &call.command.cancelled_by,
                call.etag,
            )
            .instrument(span("CancelJob", &tenant, call.job_id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn approve_job(
        &self,
        req: Request<pb::ApproveJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let call = req
            .into_inner()
            .into_command(tenant.as_str())
            .map_err(bad)?;
        let view = self
            .engine
            .approve(
                &tenant,
                &call.job_id,
                call.command.epoch,
                &call.command.approved_by,
                call.etag,
            )
            .instrument(span("ApproveJob", &tenant, call.job_id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn reject_job(
        &self,
        req: Request<pb::RejectJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let call = req
            .into_inner()
            .into_command(tenant.as_str())
            .map_err(bad)?;
        let view = self
            .engine
            .reject(
                &tenant,
                &call.job_id,
                &call.command.reason,
                &call.command.rejected_by,
                call.etag,
            )
            .instrument(span("RejectJob", &tenant, call.job_id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let call = req.get_ref().parse().map_err(bad)?;
        let view = self
            .engine
            .retry(&tenant, &call.job_id, call.request_id)
            .instrument(span("RetryJob", &tenant, call.job_id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn get_service_status(
        &self,
        req: Request<pb::GetServiceStatusRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        self.auth.tenant(&req)?;
        Ok(Response::new(self.engine.service_status().into()))
    }

    async fn list_base_models(
        &self,
        req: Request<pb::ListBaseModelsRequest>,
    ) -> Result<Response<pb::ListBaseModelsResponse>, Status> {
        self.auth.tenant(&req)?;
        let base_models = self
            .engine
            .catalogue()
            .base_models
            .iter()
            .cloned()
            .map(Into::into)
            .collect();
        Ok(Response::new(pb::ListBaseModelsResponse { base_models }))
    }

    async fn get_parameter_schema(
        &self,
        req: Request<pb::GetParameterSchemaRequest>,
    ) -> Result<Response<pb::GetParameterSchemaResponse>, Status> {
        self.auth.tenant(&req)?;
        let (model, engine) = req.get_ref().parse().map_err(bad)?;
        let catalogue = self.engine.catalogue();
        let Some(m) = catalogue.base_model(&model) else {
            let mut v = loraflow_core::validation::Violations::default();
            v.push(
                "base_model",
                format!(
                    "unknown base model {:?}; see ListBaseModels",
                    model.as_str()
                ),
            );
            return Err(bad(v));
        };
        Ok(Response::new(parameter_schema(
            &catalogue.schema,
            m,
            engine,
        )))
    }
}
