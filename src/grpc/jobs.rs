//! `JobService`: what clients call. The tenant comes from the bearer token;
//! every call is the engine's job API with wire conversions around it.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::views::JobListFilter;
use loraflow_proto::convert::catalogue::parameter_schema;
use loraflow_proto::convert::job::{JobMeta, job_to_wire};
use loraflow_proto::convert::webhook::delivery_to_wire;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_server::JobService;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::auth::Auth;
use super::status::{to_status, with_reason};
use crate::engine::{Engine, JobView};

pub struct Jobs {
    pub engine: Engine,
    pub auth: Auth,
    /// The server's shutdown: open `WatchJob` streams end with
    /// `UNAVAILABLE` when it is cancelled, so that clients reconnect (to
    /// this server's successor) rather than hold the old process open.
    pub shutdown: tokio_util::sync::CancellationToken,
}

fn job(view: JobView) -> pb::Job {
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

fn bad(v: loraflow_core::validation::Violations) -> Status {
    to_status(crate::Error::InvalidArgument(v), None)
}

/// A request's required `job_id`.
fn parse_job_id(id: &str) -> Result<JobId, Status> {
    loraflow_proto::aip::job_id(id).map_err(|v| bad(v.nested("job_id")))
}

/// The span of one call about one job.
fn span(method: &'static str, tenant: &TenantId, job: &str) -> tracing::Span {
    tracing::info_span!("grpc", method, %tenant, job)
}

/// The span of a call whose job id is not known yet: the engine records it
/// (`job`) once it is.
fn span_new_job(method: &'static str, tenant: &TenantId) -> tracing::Span {
    tracing::info_span!("grpc", method, %tenant, job = tracing::field::Empty)
}

/// The span of a call about no job in particular.
fn span_tenant(method: &'static str, tenant: &TenantId) -> tracing::Span {
    tracing::info_span!("grpc", method, %tenant)
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
        let validate_only = req.get_ref().validate_only;
        let new = req.into_inner().into_domain(tenant.clone()).map_err(bad)?;
        let new = crate::engine::NewJob {
            spec: new.spec,
            request_id: new.request_id,
        };
        if validate_only {
            self.engine
                .validate_job(&tenant, &new)
                .instrument(span_new_job("CreateJob", &tenant))
                .await
                .map_err(|e| to_status(e, Some("job")))?;
            // AIP-163: the job as it would be created, without an id.
            let warnings = loraflow_core::sampling::warnings(&new.spec, &new.spec.params);
            return Ok(Response::new(pb::Job {
                tenant: tenant.to_string(),
                state: pb::JobState::Pending as i32,
                spec: Some(new.spec.into()),
                warnings,
                ..Default::default()
            }));
        }
        let view = self
            .engine
            .create_job(&tenant, new)
            .instrument(span_new_job("CreateJob", &tenant))
            .await
            .map_err(|e| to_status(e, Some("job")))?;
        Ok(Response::new(job(view)))
    }

    async fn resume_job(
        &self,
        req: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let request_id = req.get_ref().request_id().map_err(bad)?;
        let view = self
            .engine
            .resume_request(&tenant, &request_id)
            .instrument(span_new_job("ResumeJob", &tenant))
            .await
            .map_err(|e| to_status(e, None))?;
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
        let call_span = span_tenant("ListJobs", &tenant);
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
        .instrument(call_span)
        .await
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let r = req.into_inner();
        let id = parse_job_id(&r.job_id)?;
        let events = self
            .engine
            .watch(&tenant, &id, r.from_position)
            .instrument(span("WatchJob", &tenant, id.as_str()))
            .await
            .map_err(|e| to_status(e, None))?;
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

    async fn save_now(
        &self,
        req: Request<pb::SaveNowRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let job_id = parse_job_id(&req.get_ref().job_id)?;
        let view = async {
            self.engine.request_save(&tenant, &job_id).await?;
            self.engine.get_job(&tenant, &job_id).await
        }
        .instrument(span("SaveNow", &tenant, job_id.as_str()))
        .await
        .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn sample_now(
        &self,
        req: Request<pb::SampleNowRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let job_id = parse_job_id(&req.get_ref().job_id)?;
        let overrides = req.into_inner().sample.map(Into::into).unwrap_or_default();
        let view = async {
            self.engine
                .request_sample_with(&tenant, &job_id, overrides)
                .await?;
            self.engine.get_job(&tenant, &job_id).await
        }
        .instrument(span("SampleNow", &tenant, job_id.as_str()))
        .await
        .map_err(|e| match e {
            // The request's fields are under `sample`.
            crate::error::Error::InvalidArgument(v) => {
                bad(loraflow_proto::convert::nest(v, "sample"))
            }
            e => to_status(e, None),
        })?;
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
        let (c, e) = (&call.command, &self.engine);
        let view = match c.step {
            Some(step) => {
                e.approve_step(&tenant, &call.job_id, step, &c.approved_by, call.etag)
                    .instrument(span("ApproveJob", &tenant, call.job_id.as_str()))
                    .await
            }
            None => {
                e.approve(&tenant, &call.job_id, c.epoch, &c.approved_by, call.etag)
                    .instrument(span("ApproveJob", &tenant, call.job_id.as_str()))
                    .await
            }
        }
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
            .instrument(tracing::info_span!(
                "grpc",
                method = "RetryJob",
                %tenant,
                job = call.job_id.as_str(),
                new_job = tracing::field::Empty
            ))
            .await
            .map_err(|e| to_status(e, None))?;
        Ok(Response::new(job(view)))
    }

    async fn get_service_status(
        &self,
        req: Request<pb::GetServiceStatusRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let _span = span_tenant("GetServiceStatus", &tenant).entered();
        tracing::debug!("service status asked");
        let mut status: pb::ServiceStatus = self.engine.service_status().into();
        status.dataset_root = self.engine.dataset_root(&tenant).unwrap_or_default();
        status.tenant = tenant.to_string();
        Ok(Response::new(status))
    }

    async fn list_base_models(
        &self,
        req: Request<pb::ListBaseModelsRequest>,
    ) -> Result<Response<pb::ListBaseModelsResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let _span = span_tenant("ListBaseModels", &tenant).entered();
        let base_models: Vec<pb::BaseModel> = self
            .engine
            .catalogue()
            .base_models
            .iter()
            .cloned()
            .map(Into::into)
            .collect();
        tracing::debug!(count = base_models.len(), "base models listed");
        Ok(Response::new(pb::ListBaseModelsResponse { base_models }))
    }

    async fn get_parameter_schema(
        &self,
        req: Request<pb::GetParameterSchemaRequest>,
    ) -> Result<Response<pb::GetParameterSchemaResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let r = req.get_ref();
        let _span = tracing::info_span!(
            "grpc",
            method = "GetParameterSchema",
            %tenant,
            base_model = r.base_model.as_str(),
            engine = r.engine.as_str()
        )
        .entered();
        let (model, engine) = r.parse().map_err(bad)?;
        let catalogue = self.engine.catalogue();
        // An unknown model is a resource that does not exist; a known one the
        // engine cannot train is a bad combination of arguments.
        let Some(m) = catalogue.base_model(&model) else {
            return Err(with_reason(
                Code::NotFound,
                format!(
                    "base model {:?} is not in the catalogue; see ListBaseModels",
                    model.as_str()
                ),
                "BASE_MODEL_NOT_FOUND",
            ));
        };
        if !m.supports(engine) {
            let mut v = loraflow_core::validation::Violations::default();
            v.push(
                "engine",
                format!(
                    "engine {engine} cannot train base model {}; it supports {}",
                    m.id,
                    m.engines
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return Err(bad(v));
        }
        Ok(Response::new(parameter_schema(
            &catalogue.schema,
            m,
            engine,
        )))
    }

    async fn list_executors(
        &self,
        req: Request<pb::ListExecutorsRequest>,
    ) -> Result<Response<pb::ListExecutorsResponse>, Status> {
        let tenant = self.auth.tenant(&req)?;
        let _span = span_tenant("ListExecutors", &tenant).entered();
        super::fleet::list_executors(&self.engine, &tenant, req.get_ref()).map(Response::new)
    }
}
