//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers'
//! annotations and the JSON types, served at `/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{datasets, health, jobs, review, sse};

/// The API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "loraflow",
        description = "The JobService of loraflow over HTTP/JSON: the same calls, checks, limits and errors as over gRPC. Refusals are AIP-193 JSON bodies carrying the gRPC code's name and field violations."
    ),
    paths(
        jobs::create_job,
        jobs::resume_job,
        jobs::list_jobs,
        jobs::get_job,
        sse::watch_job,
        jobs::job_history,
        jobs::cancel_job,
        jobs::approve_job,
        jobs::reject_job,
        jobs::save_now,
        jobs::sample_now,
        jobs::retry_job,
        jobs::webhook_deliveries,
        review::verification,
        review::artifact,
        datasets::upload_dataset,
        jobs::service_status,
        jobs::list_base_models,
        jobs::parameter_schema,
        jobs::list_executors,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    modifiers(&Bearer, &ClosedBodies),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Training jobs: create, follow, review, act"),
        (name = "datasets", description = "Dataset uploads into the caller's namespace"),
        (name = "catalogue", description = "Base models and their parameters"),
        (name = "fleet", description = "Connected executors"),
        (name = "service", description = "The service's state"),
        (name = "health", description = "Health, readiness, metrics (no token)"),
    )
)]
pub struct ApiDoc;

/// Tenant tokens as `Authorization: Bearer <token>`.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Request bodies are closed: the server refuses a field it does not know
/// (`body::parse` names it), so each body's schema says
/// `additionalProperties: false`. The job of `POST /v1/jobs` is a job spec
/// whose `tenant` may be left out (it is the token's).
struct ClosedBodies;

/// The schemas of the request bodies (`JsonBody` in `jobs`).
const REQUEST_BODIES: [&str; 7] = [
    "CreateJob",
    "ResumeJob",
    "WithReason",
    "Approve",
    "Empty",
    "SampleNow",
    "Retry",
];

/// The schema of the job in `POST /v1/jobs`.
const NEW_JOB: &str = "NewJobSpec";

impl Modify for ClosedBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::{Ref, RefOr};
        let components = doc.components.get_or_insert_with(Default::default);
        let closed = || Some(Box::new(AdditionalProperties::FreeForm(false)));
        for name in REQUEST_BODIES {
            if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
                o.additional_properties = closed();
            }
        }
        let new_job = match components.schemas.get("JobSpec") {
            Some(RefOr::T(Schema::Object(spec))) => {
                let mut spec = spec.clone();
                spec.required.retain(|f| f != "tenant");
                spec.description = Some(
                    "A job spec as `POST /v1/jobs` takes it: `tenant` may be left out (it is the bearer token's); if given, it must be the token's."
                        .to_owned(),
                );
                spec
            }
            _ => return,
        };
        components
            .schemas
            .insert(NEW_JOB.to_owned(), RefOr::T(Schema::Object(new_job)));
        if let Some(RefOr::T(Schema::Object(create))) = components.schemas.get_mut("CreateJob")
            && let Some(job) = create.properties.get_mut("job")
        {
            *job = RefOr::Ref(Ref::from_schema_name(NEW_JOB));
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
