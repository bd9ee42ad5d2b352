//! The HTTP server: the JSON API under `/v1`, the OpenAPI document, the
//! console, `/metrics`, `/healthz` and `/readyz`, with a body size limit,
//! security headers on every answer and a cross-origin check on every
//! state-changing request.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{HeaderValue, Method, header};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::error::HttpError;
use super::{datasets, health, jobs, openapi, review, sse};
use crate::api::{Requester, Via};
use crate::engine::Engine;
use crate::grpc::auth::Auth;
use crate::metrics::Metrics;

/// What the HTTP server needs besides the engine.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The same tenant tokens as the gRPC server's.
    pub auth: Auth,
    /// The largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// The largest dataset upload (`POST /v1/datasets`) accepted.
    pub max_upload_bytes: usize,
    /// Files, names and sizes of a dataset upload: the same limits as
    /// `ArtifactService`'s (`[artifacts.transfer]`).
    pub uploads: crate::transfer::TransferLimits,
}

/// What every handler reads.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub options: Arc<HttpOptions>,
    /// Open event streams end when it is cancelled.
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
}

/// The caller of an API request, from its `Authorization: Bearer` header.
pub struct Who(pub Requester);

impl FromRequestParts<AppState> for Who {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let tenant = state.options.auth.tenant_of_headers(&parts.headers)?;
        Ok(Who(Requester::new(tenant, Via::Http)))
    }
}

/// The Content-Security-Policy of every answer: the console's own script
/// and style only, images from this origin (and `blob:` for downloads),
/// no frames, no forms posting elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// State-changing requests from another origin are refused: a browser
/// sends `Origin` with them, and it must be this server's own. (Their
/// bodies must also be `application/json`, which no cross-origin form can
/// send without a preflight this server never grants.)
async fn same_origin(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let headers = req.headers();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
        let foreign = match (headers.get(header::ORIGIN), host) {
            (None, _) => false,
            (Some(origin), Some(host)) => {
                let origin = origin.to_str().unwrap_or_default();
                origin != format!("http://{host}") && origin != format!("https://{host}")
            }
            (Some(_), None) => true,
        };
        if foreign || cross_site {
            return HttpError::new(tonic::Status::permission_denied(
                "cross-origin state-changing requests are refused; call the API from its own origin or without a browser",
            ))
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> HttpError {
    HttpError::new(tonic::Status::not_found(
        "no such path; see /v1/openapi.json",
    ))
}

/// Every route of the HTTP server.
pub fn router(state: AppState) -> Router {
    let limit = state.options.max_body_bytes;
    let api = Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/resume", post(jobs::resume_job))
        .route("/v1/jobs/{job_id}", get(jobs::get_job))
        .route("/v1/jobs/{job_id}/events", get(sse::watch_job))
        .route("/v1/jobs/{job_id}/history", get(jobs::job_history))
        .route("/v1/jobs/{job_id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{job_id}/approve", post(jobs::approve_job))
        .route("/v1/jobs/{job_id}/reject", post(jobs::reject_job))
        .route("/v1/jobs/{job_id}/save-now", post(jobs::save_now))
        .route("/v1/jobs/{job_id}/sample-now", post(jobs::sample_now))
        .route("/v1/jobs/{job_id}/retry", post(jobs::retry_job))
        .route("/v1/jobs/{job_id}/verification", get(review::verification))
        .route(
            "/v1/jobs/{job_id}/artifacts/{sha256}",
            get(review::artifact),
        )
        .route(
            "/v1/jobs/{job_id}/webhook-deliveries",
            get(jobs::webhook_deliveries),
        )
        .route(
            "/v1/datasets",
            post(datasets::upload_dataset)
                .layer(DefaultBodyLimit::max(state.options.max_upload_bytes)),
        )
        .route("/v1/service-status", get(jobs::service_status))
        .route("/v1/base-models", get(jobs::list_base_models))
        .route("/v1/parameter-schema", get(jobs::parameter_schema))
        .route("/v1/executors", get(jobs::list_executors))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    super::console::routes(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Serve the HTTP API on `listener` until `shutdown`; open event streams
/// end (clients reconnect with `Last-Event-ID`), calls in flight finish.
pub async fn serve(
    engine: Engine,
    options: HttpOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving HTTP");
    let metrics = Metrics::new();
    metrics.follow(&engine, shutdown.clone());
    let state = AppState {
        engine,
        options: Arc::new(options),
        shutdown: shutdown.clone(),
        metrics,
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
