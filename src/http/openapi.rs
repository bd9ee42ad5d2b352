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
    modifiers(&Bearer),
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

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
