//! What a reviewer reads besides the job: its artifacts' bytes (samples,
//! report images) and the verification of its log.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderValue, header};

use super::body::PathParams;
use super::error::{ErrorBody, HttpError};
use super::server::{AppState, Who};
use crate::api::artifacts::job_artifact;
use crate::api::audit::{Verification, verify_job};

#[utoipa::path(get, path = "/v1/jobs/{job_id}/verification", tag = "jobs",
    params(("job_id" = String, Path)),
    responses((status = 200, body = Verification), (status = "default", body = ErrorBody)))]
pub async fn verification(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
) -> Result<Json<Verification>, HttpError> {
    Ok(Json(verify_job(&s.engine, &who.0, &job_id).await?))
}

/// The media type of an artifact, from its name.
fn media_type(name: &str) -> &'static str {
    let ext = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "json" => "application/json",
        "txt" | "csv" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}/artifacts/{sha256}", tag = "jobs",
    params(("job_id" = String, Path), ("sha256" = String, Path, description = "The artifact's digest, as the job lists it")),
    responses((status = 200, description = "The artifact's bytes, digest-checked", content_type = "application/octet-stream"),
        (status = "default", body = ErrorBody)))]
pub async fn artifact(
    State(s): State<AppState>,
    who: Who,
    PathParams((job_id, sha256)): PathParams<(String, String)>,
) -> Result<Response, HttpError> {
    let (artifact, bytes) = job_artifact(&s.engine, &who.0, &job_id, &sha256).await?;
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type(&artifact.name)),
    );
    // Never rendered as a page of this origin, whatever it holds.
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600, immutable"),
    );
    Ok(resp)
}
