//! The `JobService` calls, one function each: check the request, call the
//! engine, return the domain answer.

use std::collections::BTreeMap;

use futures::Stream;
use futures::StreamExt;
use loraflow_core::catalogue::{Params, ServiceStatus};
use loraflow_core::job::JobSpec;
use loraflow_core::validation::Violations;
use loraflow_core::views::JobListFilter;
use loraflow_proto::pb::v1 as pb;
use loraflow_store::StoredEvent;
use tracing::Instrument;

use super::{ApiError, Requester};
use crate::engine::{Engine, FleetPage, JobView, NewJob};
use crate::webhooks::DeliveryPage;

/// The answer to `CreateJob`.
#[derive(Debug, Clone, PartialEq)]
// One per request, moved once: boxing the larger answer buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Created {
    /// `validate_only`: the spec as it would be created; nothing written.
    Valid(JobSpec),
    /// The job created (or the one a repeated request id created).
    Job(Box<JobView>),
}

/// A page of `ListJobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsPage {
    pub jobs: Vec<JobView>,
    pub next_page_token: Option<String>,
}

/// `GetServiceStatus`: the service, and where the caller uploads datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusAnswer {
    pub status: ServiceStatus,
    pub dataset_root: Option<String>,
}

/// The events of a watched job, as the engine's feed yields them.
pub type EventFeed =
    std::pin::Pin<Box<dyn Stream<Item = loraflow_store::Result<StoredEvent>> + Send>>;

/// Two checks of one request, each listing its bad fields: every violation
/// of both, or both values.
fn both<A, B>(a: Result<A, Violations>, b: Result<B, Violations>) -> Result<(A, B), ApiError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => {
            let mut v = a.err().unwrap_or_default();
            v.extend(b.err().unwrap_or_default());
            Err(v.into())
        }
    }
}

fn job_id(id: &str) -> Result<loraflow_core::ids::JobId, ApiError> {
    loraflow_proto::aip::job_id(id).map_err(|v| v.nested("job_id").into())
}

pub async fn create_job(
    engine: &Engine,
    who: &Requester,
    r: pb::CreateJobRequest,
) -> Result<Created, ApiError> {
    let tenant = &who.tenant;
    let validate_only = r.validate_only;
    let new = r.into_domain(tenant.clone())?;
    let new = NewJob {
        spec: new.spec,
        request_id: new.request_id,
    };
    let span = who.span("CreateJob", None);
    if validate_only {
        engine
            .validate_job(tenant, &new)
            .instrument(span)
            .await
            .map_err(|e| ApiError::at(e, "job"))?;
        return Ok(Created::Valid(new.spec));
    }
    let view = engine
        .create_job(tenant, new)
        .instrument(span)
        .await
        .map_err(|e| ApiError::at(e, "job"))?;
    Ok(Created::Job(Box::new(view)))
}

pub async fn resume_job(
    engine: &Engine,
    who: &Requester,
    r: &pb::ResumeJobRequest,
) -> Result<JobView, ApiError> {
    let request_id = r.request_id()?;
    Ok(engine
        .resume_request(&who.tenant, &request_id)
        .instrument(who.span("ResumeJob", None))
        .await?)
}

pub async fn get_job(
    engine: &Engine,
    who: &Requester,
    r: &pb::GetJobRequest,
) -> Result<JobView, ApiError> {
    let id = r.job_id()?;
    Ok(engine
        .get_job(&who.tenant, &id)
        .instrument(who.span("GetJob", Some(id.as_str())))
        .await?)
}

pub async fn list_jobs(
    engine: &Engine,
    who: &Requester,
    r: pb::ListJobsRequest,
) -> Result<JobsPage, ApiError> {
    let (filter, page_size) = both(r.filter(), r.page_size())?;
    let filter = JobListFilter {
        tenant: None,
        state: filter.state,
        base_model: filter.base_model,
        engine: filter.engine,
        labels: filter.labels,
    };
    let token = (!r.page_token.is_empty()).then_some(r.page_token);
    let tenant = &who.tenant;
    async move {
        let page = engine
            .list_jobs(tenant, filter, page_size as u32, token)
            .await?;
        let mut jobs = Vec::with_capacity(page.jobs.len());
        for summary in page.jobs {
            jobs.push(engine.get_job(tenant, &summary.job_id).await?);
        }
        Ok::<_, ApiError>(JobsPage {
            jobs,
            next_page_token: page.next_page_token,
        })
    }
    .instrument(who.span_tenant("ListJobs"))
    .await
}

/// The job's events after global position `r.from_position`, then each new
/// one as it is written; the stream ends after a finished job's last event.
pub async fn watch_job(
    engine: &Engine,
    who: &Requester,
    r: &pb::WatchJobRequest,
) -> Result<EventFeed, ApiError> {
    let id = job_id(&r.job_id)?;
    let events = engine
        .watch(&who.tenant, &id, r.from_position)
        .instrument(who.span("WatchJob", Some(id.as_str())))
        .await?;
    Ok(events.boxed())
}

pub async fn job_history(
    engine: &Engine,
    who: &Requester,
    r: &pb::GetJobHistoryRequest,
) -> Result<Vec<StoredEvent>, ApiError> {
    let id = r.job_id()?;
    Ok(engine
        .history(&who.tenant, &id)
        .instrument(who.span("GetJobHistory", Some(id.as_str())))
        .await?)
}

pub async fn cancel_job(
    engine: &Engine,
    who: &Requester,
    r: pb::CancelJobRequest,
) -> Result<JobView, ApiError> {
    let tenant = &who.tenant;
    let call = r.into_command(tenant.as_str())?;
    Ok(engine
        .cancel(
            tenant,
            &call.job_id,
            &call.command.reason,
            &call.command.cancelled_by,
            call.etag,
        )
        .instrument(who.span("CancelJob", Some(call.job_id.as_str())))
        .await?)
}

pub async fn save_now(
    engine: &Engine,
    who: &Requester,
    r: &pb::SaveNowRequest,
) -> Result<JobView, ApiError> {
    let id = job_id(&r.job_id)?;
    let tenant = &who.tenant;
    Ok(async {
        engine.request_save(tenant, &id).await?;
        engine.get_job(tenant, &id).await
    }
    .instrument(who.span("SaveNow", Some(id.as_str())))
    .await?)
}

pub async fn sample_now(
    engine: &Engine,
    who: &Requester,
    r: &pb::SampleNowRequest,
) -> Result<JobView, ApiError> {
    let id = job_id(&r.job_id)?;
    let tenant = &who.tenant;
    let overrides = r.sample.clone().map(Into::into).unwrap_or_default();
    async {
        engine
            .request_sample_with(tenant, &id, overrides)
            .await
            // The request's fields are under `sample`.
            .map_err(|e| ApiError::at(e, "sample"))?;
        Ok(engine.get_job(tenant, &id).await?)
    }
    .instrument(who.span("SampleNow", Some(id.as_str())))
    .await
}

pub async fn approve_job(
    engine: &Engine,
    who: &Requester,
    r: pb::ApproveJobRequest,
) -> Result<JobView, ApiError> {
    let tenant = &who.tenant;
    let call = r.into_command(tenant.as_str())?;
    let (c, span) = (
        &call.command,
        who.span("ApproveJob", Some(call.job_id.as_str())),
    );
    Ok(match c.step {
        Some(step) => {
            engine
                .approve_step(tenant, &call.job_id, step, &c.approved_by, call.etag)
                .instrument(span)
                .await
        }
        None => {
            engine
                .approve(tenant, &call.job_id, c.epoch, &c.approved_by, call.etag)
                .instrument(span)
                .await
        }
    }?)
}

pub async fn reject_job(
    engine: &Engine,
    who: &Requester,
    r: pb::RejectJobRequest,
) -> Result<JobView, ApiError> {
    let tenant = &who.tenant;
    let call = r.into_command(tenant.as_str())?;
    Ok(engine
        .reject(
            tenant,
            &call.job_id,
            &call.command.reason,
            &call.command.rejected_by,
            call.etag,
        )
        .instrument(who.span("RejectJob", Some(call.job_id.as_str())))
        .await?)
}

pub async fn retry_job(
    engine: &Engine,
    who: &Requester,
    r: &pb::RetryJobRequest,
) -> Result<JobView, ApiError> {
    let call = r.parse()?;
    let tenant = &who.tenant;
    let span = match who.via {
        super::Via::Grpc => tracing::info_span!(
            "grpc",
            method = "RetryJob",
            %tenant,
            job = call.job_id.as_str(),
            new_job = tracing::field::Empty
        ),
        super::Via::Http => tracing::info_span!(
            "http",
            method = "RetryJob",
            %tenant,
            job = call.job_id.as_str(),
            new_job = tracing::field::Empty
        ),
    };
    Ok(engine
        .retry(tenant, &call.job_id, call.request_id)
        .instrument(span)
        .await?)
}

pub fn service_status(engine: &Engine, who: &Requester) -> StatusAnswer {
    let _span = who.span_tenant("GetServiceStatus").entered();
    tracing::debug!("service status asked");
    StatusAnswer {
        status: engine.service_status(),
        dataset_root: engine.dataset_root(&who.tenant),
    }
}

/// The profiles of the catalogue's parameter schema, by name.
pub fn profiles(engine: &Engine) -> BTreeMap<String, Params> {
    engine
        .catalogue()
        .schema
        .profiles
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn list_executors(
    engine: &Engine,
    who: &Requester,
    r: &pb::ListExecutorsRequest,
) -> Result<FleetPage, ApiError> {
    let _span = who.span_tenant("ListExecutors").entered();
    let page_size = loraflow_proto::aip::page_size(r.page_size)
        .map_err(|v| ApiError::from(v.nested("page_size")))?;
    let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
    let page = engine.list_executors(&who.tenant, page_size, token)?;
    tracing::debug!(count = page.executors.len(), "executors listed");
    Ok(page)
}

pub async fn webhook_deliveries(
    engine: &Engine,
    who: &Requester,
    r: &pb::ListWebhookDeliveriesRequest,
) -> Result<DeliveryPage, ApiError> {
    let (id, page_size) = both(r.job_id(), r.page_size())?;
    let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
    Ok(engine
        .webhook_deliveries(&who.tenant, &id, page_size, token)
        .instrument(who.span("ListWebhookDeliveries", Some(id.as_str())))
        .await?)
}
