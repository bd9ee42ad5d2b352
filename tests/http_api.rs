//! The HTTP/JSON API over real loopback sockets with a plain HTTP client,
//! on SQLite and PostgreSQL: a job from creation to publication, watching
//! as Server-Sent Events resumed by `Last-Event-ID`, AIP-193 refusals (bad
//! JSON, unknown fields, oversized bodies, bad ids, wrong states, missing
//! tokens), tenant isolation, cross-origin refusals, the OpenAPI document,
//! health, and `/metrics` moving while a job runs.

use crate::common;
use crate::on_both_backends;

use std::time::Duration;

use common::http::{HttpServer, MAX_BODY, client};
use common::server::{Backend, ServerSetup, TestServer};
use common::*;
use serde_json::{Value, json};

/// A new job's spec as JSON (the tenant comes from the token).
fn spec_json(uri: &str) -> Value {
    let mut v = serde_json::to_value(spec(uri)).unwrap();
    v.as_object_mut().unwrap().remove("tenant");
    v
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    /// The AIP-193 `error.status`.
    fn code(&self) -> &str {
        self.body["error"]["status"].as_str().unwrap_or_default()
    }

    /// The fields of the `BadRequest` detail.
    fn fields(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
            .map(|v| v["field"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn reason(&self) -> Option<String> {
        self.body["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(h: &HttpServer, token: &str, path: &str) -> Answer {
    answer(client().get(h.url(path)).bearer_auth(token)).await
}

async fn post(h: &HttpServer, token: &str, path: &str, body: Value) -> Answer {
    answer(
        client()
            .post(h.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A stream of Server-Sent Events, parsed as they arrive.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(h: &HttpServer, token: &str, job: &str, last_id: Option<u64>) -> Self {
        let mut req = client()
            .get(h.url(&format!("/v1/jobs/{job}/events")))
            .bearer_auth(token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` at the end.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue;
                }
                return Some(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .expect("an event within a minute")
                .unwrap()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Read until an event of type `event`; every event read on the way.
    async fn until(&mut self, event: &str) -> Vec<Sse> {
        let mut seen = Vec::new();
        while let Some(e) = self.next().await {
            let done = e.event == event;
            seen.push(e);
            if done {
                return seen;
            }
        }
        panic!(
            "the stream ended before {event}; saw {:?}",
            seen.iter().map(|e| e.event.clone()).collect::<Vec<_>>()
        )
    }
}

async fn running(backend: Backend, executors: bool) -> Option<(TestServer, HttpServer)> {
    let setup = ServerSetup {
        executors,
        ..Default::default()
    };
    let s = TestServer::start(backend, setup).await?;
    let h = HttpServer::start(&s).await;
    Some((s, h))
}

async fn create(h: &HttpServer, token: &str, uri: &str) -> Value {
    let a = post(h, token, "/v1/jobs", json!({"job": spec_json(uri)})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

on_both_backends! {
    async fn watch_resumes_after_last_event_id(backend: Backend) {
        let Some((s, h)) = running(backend, true).await else { return };
        let job = create(&h, "t-acme", &s.dataset_uri).await;
        let id = job["status"]["job_id"].as_str().unwrap().to_owned();
        let mut first = SseReader::open(&h, "t-acme", &id, None).await;
        let seen = first.until("JobSubmitted").await;
        let last = seen.last().unwrap().id.unwrap();
        drop(first);
        // Reconnect as a browser would: the events after `last`, none again.
        let mut resumed = SseReader::open(&h, "t-acme", &id, Some(last)).await;
        let rest = resumed.until("ReviewRequested").await;
        assert!(rest.iter().all(|e| e.id.unwrap() > last), "nothing at or before {last} again");
        let history = get(&h, "t-acme", &format!("/v1/jobs/{id}/history")).await;
        let after: Vec<u64> = history.body["events"].as_array().unwrap().iter()
            .map(|e| e["position"].as_u64().unwrap())
            .filter(|p| *p > last)
            .take(rest.len())
            .collect();
        let got: Vec<u64> = rest.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(got, after, "the resumed stream is the history after {last}");
        // A Last-Event-ID that is not a position is refused.
        let bad = answer(client().get(h.url(&format!("/v1/jobs/{id}/events"))).bearer_auth("t-acme").header("last-event-id", "x")).await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.fields(), ["last-event-id"]);
        h.stop().await;
        s.stop().await;
    }

    async fn a_tenant_sees_nothing_of_another(backend: Backend) {
        let Some((s, h)) = running(backend, false).await else { return };
        let job = create(&h, "t-acme", &s.dataset_uri).await;
        let id = job["status"]["job_id"].as_str().unwrap();
        for path in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/history"), format!("/v1/jobs/{id}/events"), format!("/v1/jobs/{id}/webhook-deliveries")] {
            let a = get(&h, "t-globex", &path).await;
            assert_eq!((a.status, a.code()), (404, "NOT_FOUND"), "{path}: {}", a.body);
            assert!(!a.body.to_string().contains("acme"), "{path}: {}", a.body);
        }
        for (action, body) in [("cancel", json!({"reason": "mine now"})), ("approve", json!({"epoch": 1})), ("reject", json!({"reason": "no"})), ("save-now", json!({})), ("sample-now", json!({})), ("retry", json!({}))] {
            let a = post(&h, "t-globex", &format!("/v1/jobs/{id}/{action}"), body).await;
            assert_eq!((a.status, a.code()), (404, "NOT_FOUND"), "{action}: {}", a.body);
        }
        assert_eq!(get(&h, "t-globex", "/v1/jobs").await.body["jobs"], json!([]));
        assert_eq!(get(&h, "t-acme", "/v1/jobs").await.body["jobs"].as_array().unwrap().len(), 1);
        let job = get(&h, "t-acme", &format!("/v1/jobs/{id}")).await;
        assert_eq!(job.body["status"]["state"], "Submitted", "untouched");
        let status = get(&h, "t-globex", "/v1/service-status").await;
        assert_eq!(status.body["tenant"], "globex");
        h.stop().await;
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_writes_are_refused_and_pages_carry_a_strict_policy() {
    let Some((s, h)) = running(Backend::Sqlite, false).await else {
        return;
    };
    let c = client();
    let body = serde_json::to_vec(&json!({"job": spec_json(&s.dataset_uri)})).unwrap();
    let forged = answer(
        c.post(h.url("/v1/jobs"))
            .bearer_auth("t-acme")
            .header("content-type", "application/json")
            .header("origin", "https://evil.example")
            .body(body.clone()),
    )
    .await;
    assert_eq!((forged.status, forged.code()), (403, "PERMISSION_DENIED"));
    let own = answer(
        c.post(h.url("/v1/jobs"))
            .bearer_auth("t-acme")
            .header("content-type", "application/json")
            .header("origin", h.base.clone())
            .body(body),
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(
        get(&h, "t-acme", "/v1/jobs").await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the same-origin request made a job"
    );
    let csp = own.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(own.headers["x-content-type-options"], "nosniff");
    h.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_call() {
    let Some((s, h)) = running(Backend::Sqlite, false).await else {
        return;
    };
    let doc = answer(client().get(h.url("/v1/openapi.json"))).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/v1/jobs",
        "/v1/jobs/resume",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/history",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/approve",
        "/v1/jobs/{job_id}/reject",
        "/v1/jobs/{job_id}/save-now",
        "/v1/jobs/{job_id}/sample-now",
        "/v1/jobs/{job_id}/retry",
        "/v1/jobs/{job_id}/webhook-deliveries",
        "/v1/datasets",
        "/v1/service-status",
        "/v1/base-models",
        "/v1/parameter-schema",
        "/v1/executors",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} is documented");
    }
    assert!(doc.body["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    // And the catalogue calls answer what the document promises.
    let models = get(&h, "t-acme", "/v1/base-models").await;
    assert!(!models.body["base_models"].as_array().unwrap().is_empty());
    let schema = get(
        &h,
        "t-acme",
        "/v1/parameter-schema?base_model=tiny-sd&engine=native",
    )
    .await;
    assert_eq!(schema.status, 200, "{}", schema.body);
    assert!(
        schema.body["params"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "epochs"),
        "{}",
        schema.body
    );
    let fleet = get(&h, "t-acme", "/v1/executors").await;
    assert_eq!(fleet.status, 200);
    assert!(fleet.body["executors"].is_array());
    h.stop().await;
    s.stop().await;
}

/// A sample's value in Prometheus text (summing every label set).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_while_a_job_runs_and_health_answers() {
    let Some((s, h)) = running(Backend::Sqlite, true).await else {
        return;
    };
    let c = client();
    assert_eq!(answer(c.get(h.url("/healthz"))).await.status, 200);
    let ready = answer(c.get(h.url("/readyz"))).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["ready"], true);
    let metrics_url = h.url("/metrics");
    let scrape = || async {
        let resp = client().get(&metrics_url).send().await.unwrap();
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    assert_eq!(metric(&before, "loraflow_events_total"), 0.0, "{before}");
    assert_eq!(metric(&before, "loraflow_jobs"), 0.0);

    let job = create(&h, "t-acme", &s.dataset_uri).await;
    let id = job["status"]["job_id"].as_str().unwrap().to_owned();
    let mut events = SseReader::open(&h, "t-acme", &id, None).await;
    events.until("ReviewRequested").await;
    // Gauges are read from the views, which follow the feed: a moment.
    let mut after = scrape().await;
    for _ in 0..100 {
        if metric(&after, "loraflow_jobs{state=\"InReview\"}") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scrape().await;
    }
    assert_eq!(
        metric(&after, "loraflow_jobs{state=\"InReview\"}"),
        1.0,
        "{after}"
    );
    assert!(metric(&after, "loraflow_events_total") >= 5.0, "{after}");
    assert!(
        metric(&after, "loraflow_step_wait_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        metric(&after, "loraflow_step_duration_seconds_count") >= 1.0,
        "{after}"
    );
    for reader in ["views", "webhooks", "scheduler"] {
        assert!(
            after.contains(&format!(
                "loraflow_projection_feed_lag_events{{projection=\"{reader}\"}}"
            )),
            "{reader}: {after}"
        );
    }
    assert!(
        metric(&after, "loraflow_executors_connected") >= 1.0,
        "{after}"
    );
    assert!(after.contains("loraflow_leases_live "), "{after}");
    // Every command of the job was a commit, each timed.
    let commits = metric(&after, "loraflow_store_commit_seconds_count");
    assert!(
        commits > metric(&before, "loraflow_store_commit_seconds_count") && commits >= 5.0,
        "{after}"
    );
    assert!(metric(&after, "loraflow_store_commit_seconds_sum") > 0.0);
    // Each commit went in some write transaction, one or more to each.
    let in_transactions = metric(&after, "loraflow_store_commits_per_transaction_sum")
        - metric(&before, "loraflow_store_commits_per_transaction_sum");
    let transactions = metric(&after, "loraflow_store_commits_per_transaction_count")
        - metric(&before, "loraflow_store_commits_per_transaction_count");
    assert!(
        transactions >= 1.0 && in_transactions >= transactions,
        "{transactions} transactions of {in_transactions} commits: {after}"
    );
    h.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_webhook_failure_metrics_move() {
    // No executors: the job's first step waits in the queue. Its webhook
    // points at a closed port: every attempt fails and is retried.
    let setup = ServerSetup {
        webhooks: Some(loraflow::config::WebhooksConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        }),
        ..Default::default()
    };
    let Some(s) = TestServer::start(Backend::Sqlite, setup).await else {
        return;
    };
    let h = HttpServer::start(&s).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut job = spec(&s.dataset_uri);
    job.webhooks = vec![loraflow::core::webhook::WebhookSpec::new(
        format!("http://{closed}/hook"),
        ["*"],
    )];
    let mut job = serde_json::to_value(job).unwrap();
    job.as_object_mut().unwrap().remove("tenant");
    let a = post(&h, "t-acme", "/v1/jobs", json!({"job": job})).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let scrape = || async {
        client()
            .get(h.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let failed = "loraflow_webhook_attempts_total{outcome=\"failed\"}";
    let queued = "loraflow_queue_depth{kind=\"validate_dataset\",requires=\"none\"}";
    let mut text = scrape().await;
    for _ in 0..100 {
        if metric(&text, failed) >= 2.0 && metric(&text, queued) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape().await;
    }
    assert!(
        metric(&text, failed) >= 2.0,
        "attempts fail and are retried: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "loraflow_webhook_attempts_total{outcome=\"delivered\"}"
        ),
        0.0
    );
    assert_eq!(metric(&text, queued), 1.0, "{text}");
    assert!(
        text.contains(
            "loraflow_queue_oldest_age_seconds{kind=\"validate_dataset\",requires=\"none\"}"
        ),
        "{text}"
    );
    assert!(text.contains("loraflow_webhook_deliveries_due "), "{text}");
    // The failures are counted, not just the last: later scrapes only rise.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = scrape().await;
    assert!(metric(&later, failed) > metric(&text, failed), "{later}");
    h.stop().await;
    s.stop().await;
}

async fn a_job_from_submit_to_published(backend: Backend) {
    let Some((s, h)) = running(backend, true).await else {
        return;
    };
    let rid = "0b6c6f1e-1111-4222-8333-444455556666";
    let body = json!({"job": spec_json(&s.dataset_uri), "request_id": rid});
    let a = post(&h, "t-acme", "/v1/jobs", body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = a.body["status"]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(a.body["name"], format!("jobs/{id}"));
    assert_eq!(a.body["status"]["tenant"], "acme");
    // The same request id answers the same job.
    let again = post(&h, "t-acme", "/v1/jobs", body).await;
    assert_eq!(again.body["status"]["job_id"], id.as_str());

    // Follow it to review over SSE, then approve and follow to the end.
    let mut events = SseReader::open(&h, "t-acme", &id, None).await;
    let seen = events.until("ReviewRequested").await;
    assert_eq!(seen[0].event, "JobCreated");
    assert!(
        seen.iter().any(|e| e.event == "StepProgressed"),
        "progress is streamed"
    );
    let positions: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "ids rise: {positions:?}"
    );
    assert_eq!(seen.last().unwrap().data["job_id"], id.as_str());

    let job = get(&h, "t-acme", &format!("/v1/jobs/{id}")).await;
    assert_eq!(job.status, 200);
    assert_eq!(job.body["status"]["state"], "InReview");
    let listed = get(&h, "t-acme", "/v1/jobs?state=InReview&page_size=10").await;
    assert_eq!(
        listed.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    let none = get(&h, "t-acme", "/v1/jobs?state=Failed").await;
    assert_eq!(none.body["jobs"].as_array().unwrap().len(), 0);

    let etag = job.body["etag"].as_str().unwrap();
    let approved = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/approve"),
        json!({"epoch": 2, "etag": etag}),
    )
    .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["status"]["approved_epoch"], 2);
    events.until("JobPublished").await;
    let end = events.next().await.expect("an end event");
    assert_eq!(end.event, "end");
    assert!(
        events.next().await.is_none(),
        "the stream closes after the end"
    );

    let history = get(&h, "t-acme", &format!("/v1/jobs/{id}/history")).await;
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"JobCreated"));
    assert_eq!(types.last(), Some(&"JobPublished"));
    let deliveries = get(&h, "t-acme", &format!("/v1/jobs/{id}/webhook-deliveries")).await;
    assert_eq!(deliveries.status, 200);
    assert_eq!(deliveries.body["deliveries"], json!([]));
    h.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_submit_to_published_sqlite() {
    a_job_from_submit_to_published(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_submit_to_published_postgres() {
    a_job_from_submit_to_published(Backend::Postgres).await
}

async fn refusals_are_aip_193_and_write_nothing(backend: Backend) {
    let Some((s, h)) = running(backend, false).await else {
        return;
    };
    let c = client();
    // Not JSON.
    let a = answer(
        c.post(h.url("/v1/jobs"))
            .bearer_auth("t-acme")
            .header("content-type", "application/json")
            .body("{\"job\": "),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (400, "INVALID_ARGUMENT"),
        "{}",
        a.body
    );
    assert_eq!(a.body["error"]["code"], 400);
    assert_eq!(a.fields(), ["body"]);
    // Not declared JSON.
    let a = answer(
        c.post(h.url("/v1/jobs"))
            .bearer_auth("t-acme")
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["content-type".to_owned()])
    );
    // Unknown fields, at the top and inside the spec.
    let a = post(
        &h,
        "t-acme",
        "/v1/jobs",
        json!({"job": spec_json(&s.dataset_uri), "bogus": 1}),
    )
    .await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["bogus".to_owned()]),
        "{}",
        a.body
    );
    let mut spec = spec_json(&s.dataset_uri);
    spec["colour"] = json!("red");
    let a = post(&h, "t-acme", "/v1/jobs", json!({"job": spec})).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.fields().iter().all(|f| f.starts_with("job")),
        "{:?}",
        a.fields()
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{}",
        a.body
    );
    // A field of the wrong type, by its path.
    let mut spec = spec_json(&s.dataset_uri);
    spec["priority"] = json!("high");
    let a = post(&h, "t-acme", "/v1/jobs", json!({"job": spec})).await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["job.priority".to_owned()]),
        "{}",
        a.body
    );
    // The engine's checks, with the gRPC field paths.
    let mut spec = spec_json(&s.dataset_uri);
    spec["priority"] = json!(1000);
    let a = post(&h, "t-acme", "/v1/jobs", json!({"job": spec})).await;
    assert_eq!(
        (a.status, a.code()),
        (400, "INVALID_ARGUMENT"),
        "{}",
        a.body
    );
    assert_eq!(a.fields(), ["job.priority"]);
    // Another tenant named in the spec.
    let mut spec = spec_json(&s.dataset_uri);
    spec["tenant"] = json!("globex");
    let a = post(&h, "t-acme", "/v1/jobs", json!({"job": spec})).await;
    assert_eq!(a.fields(), ["job.tenant"]);
    // Over the body limit: 413, RESOURCE_EXHAUSTED.
    let big = json!({"job": spec_json(&s.dataset_uri), "request_id": "x".repeat(MAX_BODY)});
    let a = post(&h, "t-acme", "/v1/jobs", big).await;
    assert_eq!(
        (a.status, a.code()),
        (413, "RESOURCE_EXHAUSTED"),
        "{}",
        a.body
    );
    // None of it made a job.
    let list = get(&h, "t-acme", "/v1/jobs").await;
    assert_eq!(list.body["jobs"], json!([]));

    // Ids, query parameters, states, etags.
    let a = get(&h, "t-acme", "/v1/jobs/not%20an%20id").await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["job_id".to_owned()]),
        "{}",
        a.body
    );
    let a = get(&h, "t-acme", "/v1/jobs?colour=red").await;
    assert_eq!((a.status, a.fields()), (400, vec!["colour".to_owned()]));
    let a = get(&h, "t-acme", "/v1/jobs?page_size=-1").await;
    assert_eq!((a.status, a.fields()), (400, vec!["page_size".to_owned()]));
    let a = get(&h, "t-acme", "/v1/jobs?state=Sleeping").await;
    assert_eq!((a.status, a.fields()), (400, vec!["state".to_owned()]));
    let job = create(&h, "t-acme", &s.dataset_uri).await;
    let id = job["status"]["job_id"].as_str().unwrap();
    let a = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/approve"),
        json!({"epoch": 1}),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (400, "FAILED_PRECONDITION"),
        "{}",
        a.body
    );
    let stale = (job["etag"].as_str().unwrap().parse::<u64>().unwrap() - 1).to_string();
    let a = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/cancel"),
        json!({"reason": "x", "etag": stale}),
    )
    .await;
    assert_eq!((a.status, a.code()), (409, "ABORTED"), "{}", a.body);
    assert_eq!(a.reason().as_deref(), Some("ETAG_MISMATCH"));
    let a = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/reject"),
        json!({"reason": " "}),
    )
    .await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["reason".to_owned()]),
        "{}",
        a.body
    );
    let a = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/save-now"),
        json!({"now": true}),
    )
    .await;
    assert_eq!((a.status, a.fields()), (400, vec!["now".to_owned()]));
    let a = get(
        &h,
        "t-acme",
        "/v1/parameter-schema?base_model=nope&engine=native",
    )
    .await;
    assert_eq!((a.status, a.code()), (404, "NOT_FOUND"));
    assert_eq!(a.reason().as_deref(), Some("BASE_MODEL_NOT_FOUND"));

    // Tokens, exactly as over gRPC.
    let a = answer(c.get(h.url("/v1/jobs"))).await;
    assert_eq!((a.status, a.code()), (401, "UNAUTHENTICATED"));
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    let a = get(&h, "e-gpu-1", "/v1/jobs").await;
    assert_eq!(a.status, 401, "an executor token is not a tenant token");
    let a = answer(c.get(h.url("/v1/jobs")).header("authorization", "t-acme")).await;
    assert_eq!(a.status, 401);

    // The cancel still works after all that, and cancels.
    let a = post(
        &h,
        "t-acme",
        &format!("/v1/jobs/{id}/cancel"),
        json!({"reason": "enough"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"]["state"], "Failed");
    h.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_aip_193_and_write_nothing_sqlite() {
    refusals_are_aip_193_and_write_nothing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_aip_193_and_write_nothing_postgres() {
    refusals_are_aip_193_and_write_nothing(Backend::Postgres).await
}

/// A `multipart/form-data` body: one file part per `(filename, bytes)`.
fn multipart(files: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "loraflow-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\ncontent-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(h: &HttpServer, token: &str, files: &[(&str, Vec<u8>)]) -> Answer {
    let (content_type, body) = multipart(files);
    answer(
        client()
            .post(h.url("/v1/datasets"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_uploaded_over_http_trains_and_refusals_write_nothing() {
    let Some((s, h)) = running(Backend::Sqlite, true).await else {
        return;
    };
    let local = s.tmp.path().join("to-upload");
    dataset(&local, 3);
    let mut files: Vec<(String, Vec<u8>)> = files_under(&local)
        .into_iter()
        .map(|p| {
            let name = format!("shots/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    let parts: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let stored_root = s.tmp.path().join("artifacts").join("datasets");
    let before = files_under(&stored_root);

    // Refusals first: each names its field, and none stores a byte.
    let a = upload(&h, "t-acme", &[("../escape.png", vec![1, 2, 3])]).await;
    assert_eq!(
        (a.status, a.fields()),
        (400, vec!["files[0].filename".to_owned()]),
        "{}",
        a.body
    );
    let a = upload(
        &h,
        "t-acme",
        &[("a.png", vec![0; 10]), ("a.png", vec![0; 10])],
    )
    .await;
    assert_eq!(a.fields(), ["files[1].filename"], "{}", a.body);
    let many: Vec<(String, Vec<u8>)> = (0..9).map(|i| (format!("f{i}.txt"), vec![b'x'])).collect();
    let many: Vec<(&str, Vec<u8>)> = many.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let a = upload(&h, "t-acme", &many).await;
    assert_eq!(a.fields(), ["files[8]"], "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 8"),
        "{}",
        a.body
    );
    let a = upload(&h, "t-acme", &[("big.png", vec![0; 300 * 1024])]).await;
    assert_eq!(a.fields(), ["files[0].size_bytes"], "{}", a.body);
    let a = upload(
        &h,
        "t-acme",
        &[
            ("a.bin", vec![0; 200 * 1024]),
            ("b.bin", vec![0; 200 * 1024]),
            ("c.bin", vec![0; 200 * 1024]),
        ],
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (413, "RESOURCE_EXHAUSTED"),
        "{}",
        a.body
    );
    let a = upload(&h, "t-acme", &[]).await;
    assert_eq!(a.fields(), ["files"], "{}", a.body);
    let a = post(&h, "t-acme", "/v1/datasets", json!({"files": []})).await;
    assert_eq!(a.fields(), ["content-type"], "{}", a.body);
    let a = upload(&h, "not-a-token", &parts).await;
    assert_eq!(a.status, 401);
    assert_eq!(files_under(&stored_root), before, "nothing was stored");

    // The upload: its URI names the dataset in acme's namespace.
    let a = upload(&h, "t-acme", &parts).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let uri = a.body["uri"].as_str().unwrap().to_owned();
    let digest = a.body["manifest_sha256"].as_str().unwrap();
    assert!(uri.contains(&format!("datasets/acme/{digest}")), "{uri}");
    assert_eq!(a.body["files"], 6);
    assert_eq!(a.body["uploaded"], 6);
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(a.body["bytes"], total);
    // The same files again store nothing and name the same dataset.
    let again = upload(&h, "t-acme", &parts).await;
    assert_eq!(
        (again.body["uri"].as_str(), again.body["uploaded"].as_u64()),
        (Some(uri.as_str()), Some(0))
    );

    // Another tenant may not name it.
    let mut theirs = spec_json(&uri);
    theirs["dataset"]["uri"] = json!(uri);
    let a = post(&h, "t-globex", "/v1/jobs", json!({"job": theirs})).await;
    assert_eq!(
        (a.status, a.code()),
        (403, "PERMISSION_DENIED"),
        "{}",
        a.body
    );
    assert_eq!(
        get(&h, "t-globex", "/v1/jobs").await.body["jobs"],
        json!([])
    );

    // Its owner trains on it, to review.
    let job = create(&h, "t-acme", &uri).await;
    let id = job["status"]["job_id"].as_str().unwrap().to_owned();
    let mut events = SseReader::open(&h, "t-acme", &id, None).await;
    events.until("ReviewRequested").await;
    h.stop().await;
    s.stop().await;
}
