//! `/healthz` (the process answers), `/readyz` (the store answers and the
//! views have caught up with the feed) and `/metrics` (Prometheus text).
//! None needs a token: they say nothing about any tenant's jobs.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use super::server::AppState;
use crate::metrics::Metrics;

/// How far behind the feed the views may be and still be ready.
const READY_WAIT: Duration = Duration::from_secs(1);

/// The answer of `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The feed's last position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_head: Option<u64>,
    /// The position each projection has applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub views: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<u64>,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                feed_head: None,
                views: None,
                webhooks: None,
                reason: Some(reason),
            }),
        )
            .into_response()
    };
    let (head, _, _) = match Metrics::positions(&s.engine).await {
        Ok(p) => p,
        Err(e) => return not_ready(format!("the store does not answer: {e}")),
    };
    let caught_up = s.engine.store().wait_for_timeout(head, READY_WAIT).await;
    let (head, views, webhooks) = match Metrics::positions(&s.engine).await {
        Ok(p) => p,
        Err(e) => return not_ready(format!("the store does not answer: {e}")),
    };
    let ready = caught_up.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        feed_head: Some(head),
        views: Some(views),
        webhooks: Some(webhooks),
        reason: caught_up
            .err()
            .map(|e| format!("the views have not caught up with the feed: {e}")),
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(&s.engine).await;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
