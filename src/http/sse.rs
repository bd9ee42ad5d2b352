//! `GET /v1/jobs/{job_id}/events`: a job's events as Server-Sent Events.
//!
//! Each event's `id` is its global position, `event` its type
//! (`StepProgressed`, ...), `data` the event as JSON ([`wire::Event`]). A
//! client that reconnects sends `Last-Event-ID` (browsers' `EventSource`
//! do it themselves) and gets the events after it; `from_position` in the
//! query does the same for the first connection. After a finished job's
//! last event the stream sends `event: end` and closes, so that clients
//! stop reconnecting. A refusal while streaming (the feed failed, the
//! server is shutting down) is `event: error` with an AIP-193 body: the
//! client reconnects with its last id.

use std::convert::Infallible;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use http::HeaderMap;
use loraflow_proto::pb::v1 as pb;
use tonic::Status;

use super::body::{PathParams, int, query_pairs};
use super::error::{ErrorBody, HttpError, http_status};
use super::server::{AppState, Who};
use super::wire;
use crate::api::jobs as calls;

/// The position to resume after: `Last-Event-ID`, else `from_position`.
fn resume_after(headers: &HeaderMap, query: Option<&str>) -> Result<u64, HttpError> {
    let q = query_pairs(query, &["from_position"])?;
    if let Some(id) = headers.get("last-event-id") {
        let text = id.to_str().unwrap_or_default().trim();
        return text.parse().map_err(|_| {
            HttpError::field(
                "last-event-id",
                format!("Last-Event-ID must be an event position (an integer); got {text:?}"),
            )
        });
    }
    Ok(int(&q, "from_position")?.unwrap_or(0))
}

fn error_event(status: &Status) -> Event {
    let body = ErrorBody::of(status, http_status(status.code()));
    Event::default()
        .event("error")
        .json_data(body)
        .unwrap_or_else(|_| Event::default().event("error"))
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}/events", tag = "jobs",
    params(("job_id" = String, Path),
        ("from_position" = Option<u64>, Query, description = "Send the events after this global position"),
        ("Last-Event-ID" = Option<u64>, Header, description = "As from_position; sent by reconnecting clients")),
    responses((status = 200, content_type = "text/event-stream", description = "The job's events, then `end` once it is finished"),
        (status = "default", body = ErrorBody)))]
pub async fn watch_job(
    State(s): State<AppState>,
    who: Who,
    PathParams(job_id): PathParams<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let req = pb::WatchJobRequest {
        job_id,
        from_position: resume_after(&headers, query.as_deref())?,
    };
    let events = calls::watch_job(&s.engine, &who.0, &req).await?;
    let stopping = s.shutdown.clone();
    let events = events
        .map(|item| match item {
            Ok(e) => match wire::Event::of(&e) {
                Ok(json) => Event::default()
                    .id(e.position.to_string())
                    .event(e.event_type.clone())
                    .json_data(json)
                    .unwrap_or_else(|err| {
                        error_event(&Status::internal(format!("event encoding: {err}")))
                    }),
                Err(err) => error_event(&Status::internal(format!("event encoding: {err}"))),
            },
            Err(err) => error_event(&Status::unavailable(format!(
                "reading the event feed failed: {err}; reconnect with Last-Event-ID"
            ))),
        })
        .take_until(s.shutdown.clone().cancelled_owned());
    // The engine's stream ends after a finished job's last event (`end`);
    // a server shutting down ends it early (`error`, UNAVAILABLE: reconnect).
    let last = futures::stream::once(async move {
        if stopping.is_cancelled() {
            error_event(&Status::unavailable(
                "the server is shutting down; reconnect with Last-Event-ID",
            ))
        } else {
            Event::default().event("end").data("{}")
        }
    });
    Ok(Sse::new(events.chain(last).map(Ok)).keep_alive(KeepAlive::default()))
}
