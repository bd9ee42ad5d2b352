//! The `JobService` calls over HTTP/JSON: each handler builds the call's
//! request from the path, query and body, calls [`crate::api::jobs`], and
//! answers JSON. Checks and limits are the call layer's.

use axum::Json;
use axum::extract::{RawQuery, State};
use loraflow_core::job::{JobSpec, JobState};
use loraflow_proto::pb::v1 as pb;
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::{JsonBody, PathParams, int, last, parse, query_pairs};
use super::error::{ErrorBody, HttpError};
use super::server::{AppState, Who};
use super::wire;
use crate::api::Created;
use crate::api::jobs as calls;
use crate::api::models;

type Answer<T> = Result<Json<T>, HttpError>;

/// `POST /v1/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateJob {
    /// The job spec: `base_model`, `engine`, `dataset` (`{"uri": ...}`: an
    /// upload of `ArtifactService` or a URI the tenant may name), `naming`,
    /// and optionally `profile`, `params`, `sample_prompts`, `priority`,
    /// `labels`, `workflow`, `webhooks`. The tenant is the token's.
    // Kept as JSON to put the token's tenant in before it is read; the
    // document declares it as `NewJobSpec` (`openapi::ClosedBodies`).
    #[schema(value_type = JobSpec)]
    pub job: serde_json::Value,
    /// Idempotency key (a UUID): repeats return the first request's job.
    #[serde(default)]
    pub request_id: String,
    /// Check everything but the dataset listing and create nothing.
    #[serde(default)]
    pub validate_only: bool,
}

/// The answer to `POST /v1/jobs`: the job, or with `validate_only` the
/// spec as it would be created.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
// One per request, moved once: boxing the larger answer buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum CreateAnswer {
    Job(wire::Job),
    Valid(wire::ValidJob),
}

/// The spec of a new job: the body's `job`, owned by the caller's tenant.
fn spec(who: &Who, mut job: serde_json::Value) -> Result<JobSpec, HttpError> {
    let tenant = who.0.tenant.as_str();
    let Some(fields) = job.as_object_mut() else {
        return Err(HttpError::field("job", "the job must be a JSON object"));
    };
    match fields.get("tenant") {
        None => {
            fields.insert("tenant".into(), tenant.into());
        }
        Some(t) if t.as_str() == Some(tenant) => {}
        Some(t) => {
            return Err(HttpError::field(
                "job.tenant",
                format!("the tenant comes from the bearer token ({tenant}); got {t}"),
            ));
        }
    }
    let bytes = serde_json::to_vec(&job).map_err(|e| HttpError::field("job", e.to_string()))?;
    parse(&bytes, Some("job"))
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = CreateJob,
    responses((status = 200, body = CreateAnswer), (status = "default", body = ErrorBody)))]
pub async fn create_job(
    State(s): State<AppState>,
    who: Who,
    JsonBody(body): JsonBody<CreateJob>,
) -> Answer<CreateAnswer> {
    let spec = spec(&who, body.job)?;
    let req = pb::CreateJobRequest {
        job: Some(spec.into()),
        request_id: body.request_id,
        validate_only: body.validate_only,
    };
    Ok(Json(
        match calls::create_job(&s.engine, &who.0, req).await? {
            Created::Valid(spec) => CreateAnswer::Valid(wire::ValidJob { valid: true, spec }),
            Created::Job(view) => CreateAnswer::Job((*view).into()),
        },
    ))
}

/// `POST /v1/jobs/resume`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ResumeJob {
    /// The `request_id` of the create whose answer was lost.
    pub request_id: String,
}

#[utoipa::path(post, path = "/v1/jobs/resume", tag = "jobs", request_body = ResumeJob,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn resume_job(
    State(s): State<AppState>,
    who: Who,
    JsonBody(body): JsonBody<ResumeJob>,
) -> Answer<wire::Job> {
    let req = pb::ResumeJobRequest {
        request_id: body.request_id,
    };
    Ok(Json(
        calls::resume_job(&s.engine, &who.0, &req).await?.into(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path)),
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn get_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
) -> Answer<wire::Job> {
    let req = pb::GetJobRequest {
        job_id,
        ..Default::default()
    };
    Ok(Json(calls::get_job(&s.engine, &who.0, &req).await?.into()))
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("state" = Option<String>, Query, description = "Pending, Submitted, Processing, InReview, Approved, Published or Failed"),
        ("base_model" = Option<String>, Query),
        ("engine" = Option<String>, Query),
        ("label" = Option<Vec<String>>, Query, description = "key=value; repeat for more, each must match"),
        ("page_size" = Option<i32>, Query, description = "0 or absent: 50; at most 500"),
        ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = wire::JobPage), (status = "default", body = ErrorBody)))]
pub async fn list_jobs(
    State(s): State<AppState>,
    who: Who,
    RawQuery(query): RawQuery,
) -> Answer<wire::JobPage> {
    let q = query_pairs(
        query.as_deref(),
        &[
            "state",
            "base_model",
            "engine",
            "label",
            "page_size",
            "page_token",
        ],
    )?;
    let state = match last(&q, "state") {
        None | Some("") => pb::JobState::Unspecified,
        Some(raw) => raw
            .parse::<JobState>()
            .map(pb::JobState::from)
            .map_err(|e| HttpError::field("state", e))?,
    };
    let req = pb::ListJobsRequest {
        page_size: int(&q, "page_size")?.unwrap_or(0),
        page_token: last(&q, "page_token").unwrap_or_default().to_owned(),
        state: state as i32,
        base_model: last(&q, "base_model").unwrap_or_default().to_owned(),
        engine: last(&q, "engine").unwrap_or_default().to_owned(),
        labels: q
            .iter()
            .filter(|(k, _)| k == "label")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let page = calls::list_jobs(&s.engine, &who.0, req).await?;
    Ok(Json(wire::JobPage {
        jobs: page.jobs.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}/history", tag = "jobs",
    params(("job_id" = String, Path)),
    responses((status = 200, body = wire::History), (status = "default", body = ErrorBody)))]
pub async fn job_history(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
) -> Answer<wire::History> {
    let req = pb::GetJobHistoryRequest { job_id };
    let events = calls::job_history(&s.engine, &who.0, &req).await?;
    let events = events
        .iter()
        .map(wire::Event::of)
        .collect::<Result<_, _>>()
        .map_err(|e| HttpError::new(tonic::Status::internal(format!("event encoding: {e}"))))?;
    Ok(Json(wire::History { events }))
}

/// `POST /v1/jobs/{job_id}/cancel` and `/reject`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WithReason {
    /// Why, kept in the job's history; required to reject.
    #[serde(default)]
    pub reason: String,
    /// Act only if the job is still at this etag.
    #[serde(default)]
    pub etag: String,
}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path)), request_body = WithReason,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn cancel_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(body): JsonBody<WithReason>,
) -> Answer<wire::Job> {
    let req = pb::CancelJobRequest {
        job_id,
        reason: body.reason,
        etag: body.etag,
    };
    Ok(Json(
        calls::cancel_job(&s.engine, &who.0, req).await?.into(),
    ))
}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/reject", tag = "jobs",
    params(("job_id" = String, Path)), request_body = WithReason,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn reject_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(body): JsonBody<WithReason>,
) -> Answer<wire::Job> {
    let req = pb::RejectJobRequest {
        job_id,
        reason: body.reason,
        etag: body.etag,
    };
    Ok(Json(
        calls::reject_job(&s.engine, &who.0, req).await?.into(),
    ))
}

/// `POST /v1/jobs/{job_id}/approve`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Approve {
    /// The epoch whose LoRA is published; required unless `step` is given.
    #[serde(default)]
    pub epoch: u32,
    /// Instead of `epoch`: the optimisation step at which the LoRA to publish
    /// was saved (a save-now LoRA between epochs, or an epoch's).
    #[serde(default)]
    pub step: Option<u64>,
    /// Act only if the job is still at this etag.
    #[serde(default)]
    pub etag: String,
}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/approve", tag = "jobs",
    params(("job_id" = String, Path)), request_body = Approve,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn approve_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(body): JsonBody<Approve>,
) -> Answer<wire::Job> {
    let req = pb::ApproveJobRequest {
        job_id,
        epoch: body.epoch,
        step: body.step,
        etag: body.etag,
    };
    Ok(Json(
        calls::approve_job(&s.engine, &who.0, req).await?.into(),
    ))
}

/// A body with no fields (`{}`): state-changing calls always send JSON.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Empty {}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/save-now", tag = "jobs",
    params(("job_id" = String, Path)), request_body = Empty,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn save_now(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(Empty {}): JsonBody<Empty>,
) -> Answer<wire::Job> {
    let req = pb::SaveNowRequest { job_id };
    Ok(Json(calls::save_now(&s.engine, &who.0, &req).await?.into()))
}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/sample-now", tag = "jobs",
    params(("job_id" = String, Path)), request_body = SampleNow,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn sample_now(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(body): JsonBody<SampleNow>,
) -> Answer<wire::Job> {
    let req = pb::SampleNowRequest {
        job_id,
        sample: Some(pb::SampleOverrides {
            prompts: body.prompts,
            negative_prompt: body.negative_prompt,
            sampler: body.sampler,
            steps: body.steps,
            guidance_scale: body.guidance_scale,
            width: body.width,
            height: body.height,
            seed: body.seed,
            lora_strength: body.lora_strength,
        }),
    };
    Ok(Json(
        calls::sample_now(&s.engine, &who.0, &req).await?.into(),
    ))
}

/// `POST /v1/jobs/{job_id}/sample-now`: each field overrides the job's
/// sample setting of the same name for this request only; `{}` keeps them.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SampleNow {
    #[serde(default)]
    pub prompts: Vec<String>,
    pub negative_prompt: Option<String>,
    pub sampler: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seed: Option<u64>,
    pub lora_strength: Option<f64>,
}

/// `POST /v1/jobs/{job_id}/retry`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Retry {
    /// Idempotency key (a UUID) of the retry.
    #[serde(default)]
    pub request_id: String,
}

#[utoipa::path(post, path = "/v1/jobs/{job_id}/retry", tag = "jobs",
    params(("job_id" = String, Path)), request_body = Retry,
    responses((status = 200, body = wire::Job), (status = "default", body = ErrorBody)))]
pub async fn retry_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    JsonBody(body): JsonBody<Retry>,
) -> Answer<wire::Job> {
    let req = pb::RetryJobRequest {
        job_id,
        request_id: body.request_id,
    };
    Ok(Json(
        calls::retry_job(&s.engine, &who.0, &req).await?.into(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}/webhook-deliveries", tag = "jobs",
    params(("job_id" = String, Path), ("page_size" = Option<i32>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = wire::DeliveryPage), (status = "default", body = ErrorBody)))]
pub async fn webhook_deliveries(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    RawQuery(query): RawQuery,
) -> Answer<wire::DeliveryPage> {
    let q = query_pairs(query.as_deref(), &["page_size", "page_token"])?;
    let req = pb::ListWebhookDeliveriesRequest {
        job_id,
        page_size: int(&q, "page_size")?.unwrap_or(0),
        page_token: last(&q, "page_token").unwrap_or_default().to_owned(),
    };
    let page = calls::webhook_deliveries(&s.engine, &who.0, &req).await?;
    Ok(Json(wire::DeliveryPage {
        deliveries: page
            .deliveries
            .into_iter()
            .map(|d| wire::WebhookDelivery {
                delivery: d.delivery,
                attempts: d.attempts,
            })
            .collect(),
        next_page_token: page.next_page_token,
    }))
}

#[utoipa::path(get, path = "/v1/service-status", tag = "service",
    responses((status = 200, body = wire::Service), (status = "default", body = ErrorBody)))]
pub async fn service_status(State(s): State<AppState>, who: Who) -> Answer<wire::Service> {
    let a = calls::service_status(&s.engine, &who.0);
    Ok(Json(wire::Service {
        tenant: who.0.tenant.to_string(),
        dataset_root: a.dataset_root,
        status: a.status,
    }))
}

#[utoipa::path(get, path = "/v1/base-models", tag = "catalogue",
    responses((status = 200, body = wire::BaseModels), (status = "default", body = ErrorBody)))]
pub async fn list_base_models(State(s): State<AppState>, who: Who) -> Answer<wire::BaseModels> {
    Ok(Json(wire::BaseModels {
        base_models: {
            let m = models::list_base_models(&s.engine, &who.0).await?;
            m.catalogue
                .into_iter()
                .chain(m.own.iter().map(|c| c.as_base_model()))
                .collect()
        },
    }))
}

#[utoipa::path(get, path = "/v1/parameter-schema", tag = "catalogue",
    params(("base_model" = String, Query), ("engine" = String, Query)),
    responses((status = 200, body = wire::ParameterSchema), (status = "default", body = ErrorBody)))]
pub async fn parameter_schema(
    State(s): State<AppState>,
    who: Who,
    RawQuery(query): RawQuery,
) -> Answer<wire::ParameterSchema> {
    let q = query_pairs(query.as_deref(), &["base_model", "engine"])?;
    let req = pb::GetParameterSchemaRequest {
        base_model: last(&q, "base_model").unwrap_or_default().to_owned(),
        engine: last(&q, "engine").unwrap_or_default().to_owned(),
    };
    let schema = models::parameter_schema(&s.engine, &who.0, &req).await?;
    Ok(Json(wire::ParameterSchema {
        params: s
            .engine
            .catalogue()
            .schema
            .effective_for(&schema.model, schema.engine),
        profiles: calls::profiles(&s.engine),
    }))
}

#[utoipa::path(get, path = "/v1/executors", tag = "fleet",
    params(("page_size" = Option<i32>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = wire::ExecutorPage), (status = "default", body = ErrorBody)))]
pub async fn list_executors(
    State(s): State<AppState>,
    who: Who,
    RawQuery(query): RawQuery,
) -> Answer<wire::ExecutorPage> {
    let q = query_pairs(query.as_deref(), &["page_size", "page_token"])?;
    let req = pb::ListExecutorsRequest {
        page_size: int(&q, "page_size")?.unwrap_or(0),
        page_token: last(&q, "page_token").unwrap_or_default().to_owned(),
    };
    let page = calls::list_executors(&s.engine, &who.0, &req)?;
    Ok(Json(wire::ExecutorPage {
        executors: page.executors.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}
