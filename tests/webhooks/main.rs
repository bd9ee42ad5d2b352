//! Webhooks end to end, on SQLite and PostgreSQL: a real HTTP receiver on a
//! loopback port that fails the first attempts (500s, then refuses
//! connections, then is back) gets every matching event exactly once, in
//! order, signed with the tenant's secret; a restart of the engine in the
//! middle of a backlog loses nothing and repeats nothing acknowledged.
//! Backoffs are configured short (tens of milliseconds) so the tests are
//! quick; waits follow the receiver's and the outbox's change signals.

use crate::common;
use crate::on_both_backends;
mod receiver;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::server::{ACME_WEBHOOK_SECRET, Backend, auth_config, drop_schema, store_for};
use common::*;
use hmac::{Hmac, Mac};
use loraflow::Engine;
use loraflow::NewJob;
use loraflow::config::WebhooksConfig;
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::JobEvent;
use loraflow::core::webhook::{
    DeliveryState, WebhookBody, WebhookSpec, event_id, event_type, filter_matches,
};
use loraflow::executors::{Label, Publish, ValidateDataset, ValidateOptions};
use loraflow::store::StoreOptions;
use loraflow::webhooks::{DEFAULT_TOLERANCE, WebhookDelivery};
use loraflow_proto::pb::v1 as pb;
use receiver::{Received, Receiver};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

// --------------------------------------------------------------- the engine

fn fast_webhooks() -> WebhooksConfig {
    WebhooksConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(80),
        request_timeout: Duration::from_secs(5),
        give_up_after: Duration::ZERO,
        concurrency: 4,
        poll_interval: Duration::from_millis(50),
        ..WebhooksConfig::default()
    }
}

async fn engine(url: &str, options: &StoreOptions, dir: &Path, executors: bool) -> Engine {
    let mut b = Engine::builder()
        .store(url)
        .store_options(options.clone())
        .artifacts(dir.join("artifacts").display().to_string())
        .workdir(dir.join("work"))
        .webhooks(fast_webhooks())
        .webhook_secret("acme", ACME_WEBHOOK_SECRET);
    if executors {
        b = b
            .executor(ValidateDataset {
                options: ValidateOptions {
                    min_side: 32,
                    ..Default::default()
                },
            })
            .executor(Label::default())
            .executor(FileTrainer::default())
            .executor(FileSampler)
            .executor(Publish {
                destination: format!("file://{}", dir.join("published").display()),
            });
    }
    b.build().await.unwrap()
}

async fn upload(engine: &Engine, dir: &Path) -> String {
    dataset(&dir.join("upload"), 3);
    engine
        .artifacts()
        .upload_dir(&dir.join("upload"), "datasets/acme/corgi")
        .await
        .unwrap()
        .0
}

async fn create(engine: &Engine, dataset_uri: &str, webhooks: Vec<WebhookSpec>) -> JobId {
    let mut spec = spec(dataset_uri);
    spec.webhooks = webhooks;
    engine
        .create_job(
            &TenantId::new("acme"),
            NewJob {
                spec,
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id
}

/// The job's delivery log, every page.
async fn log(engine: &Engine, job: &JobId) -> Vec<WebhookDelivery> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = engine
            .webhook_deliveries(&TenantId::new("acme"), job, 7, token.as_deref())
            .await
            .unwrap();
        out.extend(page.deliveries);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

/// Wait until the delivery log satisfies `cond` (woken by the outbox's
/// changes: each queued delivery and each recorded attempt).
async fn wait_log(
    engine: &Engine,
    job: &JobId,
    what: &str,
    cond: impl Fn(&[WebhookDelivery]) -> bool,
) {
    let mut changes = engine.store().webhooks().changes();
    let ok = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            changes.borrow_and_update();
            if cond(&log(engine, job).await) {
                return;
            }
            // Also look now and then: another process' writes do not wake us.
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
    })
    .await;
    if ok.is_err() {
        let states: Vec<_> = log(engine, job)
            .await
            .iter()
            .map(|d| {
                format!(
                    "{} {} {:?}",
                    d.delivery.url, d.delivery.sequence, d.delivery.state
                )
            })
            .collect();
        panic!("timed out waiting for {what}; log: {states:?}");
    }
}

/// The event ids of `job` that `filters` select, in order.
async fn expected(engine: &Engine, job: &JobId, filters: &[&str]) -> Vec<String> {
    engine
        .history(&TenantId::new("acme"), job)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            let t = event_type(&e.payload);
            filters.iter().any(|f| filter_matches(f, t))
        })
        .map(|e| event_id(&e.job_id, e.sequence))
        .collect()
}

/// Every request must be signed with acme's secret over `{timestamp}.{body}`.
fn check_signatures(requests: &[Received]) {
    let now = chrono::Utc::now().timestamp();
    for r in requests {
        loraflow::webhooks::verify(
            ACME_WEBHOOK_SECRET.as_bytes(),
            &r.timestamp,
            &r.signature,
            &r.body,
            now,
            DEFAULT_TOLERANCE,
        )
        .unwrap_or_else(|e| panic!("request for {} does not verify: {e}", r.event_id));
        // The documented scheme, computed here by hand.
        let mut mac = Hmac::<Sha256>::new_from_slice(ACME_WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(format!("{}.", r.timestamp).as_bytes());
        mac.update(&r.body);
        let hex = hex::encode(mac.finalize().into_bytes());
        assert_eq!(r.signature, format!("v1={hex}"));
        assert!(
            loraflow::webhooks::verify(
                b"another secret",
                &r.timestamp,
                &r.signature,
                &r.body,
                now,
                DEFAULT_TOLERANCE
            )
            .is_err()
        );
        let body: WebhookBody = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body.id, r.event_id);
        assert_eq!(body.event_type, r.event_type);
        assert_eq!(body.tenant.as_str(), "acme");
        assert!(r.attempt >= 1);
    }
}

/// No event acknowledged twice at `path`.
fn no_repeats(acked: &[String], path: &str) {
    let unique: HashSet<_> = acked.iter().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "{path} acknowledged an event twice: {acked:?}"
    );
}

// ---------------------------------------------------------------- the tests

on_both_backends! {
    async fn every_event_arrives_once_in_order_after_errors_and_an_outage(backend: Backend) {
        let tmp = tempfile::tempdir().unwrap();
        let Some((url, options)) = store_for(backend, tmp.path()).await else {
            return;
        };
        // The first three requests get 500s.
        let mut rx = Receiver::start(&[500, 500, 500]).await;
        let engine = engine(&url, &options, tmp.path(), true).await;
        let dataset = upload(&engine, tmp.path()).await;
        let all = ["workflow:started", "workflow:completed", "workflow:failed", "step:*"];
        let done = ["workflow:completed"];
        let job = create(
            &engine,
            &dataset,
            vec![
                WebhookSpec::new(rx.url("/all"), all),
                WebhookSpec::new(rx.url("/done"), done),
            ],
        )
        .await;
        let tenant = TenantId::new("acme");

        // Then the receiver goes down while the job runs to review.
        rx.wait("three 500s", |s| s.requests.len() >= 3).await;
        rx.stop().await;
        wait_log(&engine, &job, "an attempt refused by a receiver that is down", |log| {
            log.iter().flat_map(|d| &d.attempts).any(|a| a.status.is_none())
        })
        .await;
        wait_event(&engine, &tenant, &job, |e| matches!(e, JobEvent::ReviewRequested(_))).await;
        engine.approve(&tenant, &job, 2, "reviewer", None).await.unwrap();
        wait_event(&engine, &tenant, &job, |e| matches!(e, JobEvent::JobPublished(_))).await;

        // Back up: the backlog drains, in order.
        rx.restart().await;
        let want_all = expected(&engine, &job, &all).await;
        let want_done = expected(&engine, &job, &done).await;
        assert_eq!(want_done.len(), 1);
        assert!(want_all.len() > 10, "{want_all:?}");
        rx.wait("every event acknowledged", |s| {
            s.acked("/all").len() >= want_all.len() && s.acked("/done").len() >= want_done.len()
        })
        .await;
        wait_log(&engine, &job, "every delivery recorded", |log| {
            log.iter().all(|d| d.delivery.state == DeliveryState::Delivered)
        })
        .await;

        let requests = rx.requests();
        let acked_all = rx.state.lock().unwrap().acked("/all");
        let acked_done = rx.state.lock().unwrap().acked("/done");
        assert_eq!(acked_all, want_all, "/all got its events once, in feed order");
        assert_eq!(acked_done, want_done, "/done got workflow:completed only");
        no_repeats(&acked_all, "/all");
        check_signatures(&requests);
        let failed: Vec<_> = requests.iter().filter(|r| r.status == 500).collect();
        assert_eq!(failed.len(), 3);
        // Nothing of a later event reached a URL before its earlier event
        // was acknowledged there.
        for path in ["/all", "/done"] {
            let mut last_acked = 0u64;
            for r in requests.iter().filter(|r| r.path == path) {
                let seq: u64 = r.event_id.rsplit(':').next().unwrap().parse().unwrap();
                assert!(seq >= last_acked, "{path}: {} sent after {last_acked} was acknowledged", r.event_id);
                if r.status < 300 {
                    last_acked = seq;
                }
            }
        }

        // The delivery log: every attempt, errors included.
        let log = log(&engine, &job).await;
        assert_eq!(log.len(), want_all.len() + want_done.len());
        let attempts: usize = log.iter().map(|d| d.attempts.len()).sum();
        assert_eq!(attempts, requests.len() + log.iter().flat_map(|d| &d.attempts).filter(|a| a.status.is_none()).count());
        for d in &log {
            let last = d.attempts.last().expect("attempted");
            assert!(last.delivered && last.status == Some(200), "{d:?}");
            assert_eq!(d.delivery.attempts as usize, d.attempts.len());
            assert!(d.attempts[..d.attempts.len() - 1].iter().all(|a| !a.delivered && a.error.is_some()));
        }
        let errors: Vec<_> = log.iter().flat_map(|d| &d.attempts).filter_map(|a| a.error.as_deref()).collect();
        assert!(errors.iter().any(|e| e.starts_with("HTTP 500: try again later")), "{errors:?}");
        assert!(errors.iter().any(|e| e.to_lowercase().contains("connect")), "{errors:?}");

        // The same log over gRPC, a page at a time.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let (engine, stop) = (engine.clone(), stop.clone());
            let options = loraflow::grpc::ServeOptions {
                auth: loraflow::grpc::auth::Auth::from_config(&auth_config()),
                max_message_bytes: 4 << 20,
                tls: None,
                max_poll: Duration::from_secs(1),
                transfer: Default::default(),
            };
            async move { loraflow::grpc::serve(engine, options, listener, stop).await.unwrap() }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = pb::job_service_client::JobServiceClient::with_interceptor(
            channel,
            |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", "Bearer t-acme".parse().unwrap());
                Ok(req)
            },
        );
        let mut wire = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                    job_id: job.to_string(),
                    page_size: 5,
                    page_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.deliveries.len() <= 5);
            wire.extend(page.deliveries);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(wire.len(), log.len());
        for (w, d) in wire.iter().zip(&log) {
            assert_eq!(w.event_id, d.delivery.event_id);
            assert_eq!(w.url, d.delivery.url);
            assert_eq!(w.state, pb::WebhookDeliveryState::Delivered as i32);
            assert_eq!(w.attempts.len(), d.attempts.len());
        }
        let err = client
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                job_id: job.to_string(),
                page_size: 5,
                page_token: "not-a-token".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        stop.cancel();
        let _ = server.await;

        engine.shutdown().await;
        rx.stop().await;
        drop_schema(&options).await;
    }

    async fn a_restart_mid_backlog_loses_nothing_and_repeats_nothing(backend: Backend) {
        let tmp = tempfile::tempdir().unwrap();
        let Some((url, options)) = store_for(backend, tmp.path()).await else {
            return;
        };
        // Three deliveries get through (to either URL: the two deliver
        // side by side), then the receiver answers 503.
        let rx = Receiver::start(&[200, 200, 200]).await;
        rx.set_default(503);
        let first = engine(&url, &options, tmp.path(), true).await;
        let dataset = upload(&first, tmp.path()).await;
        let job = create(
            &first,
            &dataset,
            vec![
                WebhookSpec::new(rx.url("/all"), ["*"]),
                WebhookSpec::new(rx.url("/failed"), ["workflow:failed"]),
            ],
        )
        .await;
        let tenant = TenantId::new("acme");
        wait_event(&first, &tenant, &job, |e| matches!(e, JobEvent::ReviewRequested(_))).await;
        first.cancel(&tenant, &job, "enough", "tester", None).await.unwrap();
        rx.wait("a backlog behind 503s", |s| {
            s.acked("/all").len() + s.acked("/failed").len() == 3
                && s.requests.iter().filter(|r| r.status == 503).count() >= 3
        })
        .await;
        first.shutdown().await;
        let before = rx.requests().len();

        // A new engine on the same store, and the receiver is healthy again.
        rx.set_default(200);
        let second = engine(&url, &options, tmp.path(), false).await;
        let want_all = expected(&second, &job, &["*"]).await;
        let want_failed = expected(&second, &job, &["workflow:failed"]).await;
        assert_eq!(want_failed.len(), 1, "the cancellation");
        rx.wait("the backlog delivered", |s| {
            s.acked("/all").len() >= want_all.len() && !s.acked("/failed").is_empty()
        })
        .await;
        wait_log(&second, &job, "every delivery recorded", |log| {
            log.iter().all(|d| d.delivery.state == DeliveryState::Delivered)
        })
        .await;
        let acked_all = rx.state.lock().unwrap().acked("/all");
        assert_eq!(acked_all, want_all);
        no_repeats(&acked_all, "/all");
        assert_eq!(rx.state.lock().unwrap().acked("/failed"), want_failed);
        let requests = rx.requests();
        check_signatures(&requests);
        // The engine after the restart went on counting attempts.
        assert!(
            requests[before..].iter().any(|r| r.attempt > 1),
            "an event that failed before the restart was retried after it"
        );
        assert!(
            requests[before..]
                .iter()
                .all(|r| !rx.state.lock().unwrap().requests[..before]
                    .iter()
                    .any(|old| old.event_id == r.event_id && old.path == r.path && old.status < 300)),
            "an acknowledged event was sent again after the restart"
        );
        second.shutdown().await;
        drop_schema(&options).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhooks_are_refused_with_the_field_named_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, options) = store_for(Backend::Sqlite, tmp.path()).await.unwrap();
    let engine = engine(&url, &options, tmp.path(), false).await;
    let dataset = upload(&engine, tmp.path()).await;
    let mut spec = spec(&dataset);
    spec.webhooks = vec![
        WebhookSpec::new("ftp://example.com/hook", ["workflow:started"]),
        WebhookSpec::new("https://example.com/hook", ["step:*", "step:finished"]),
    ];
    let new = NewJob {
        spec,
        request_id: None,
    };
    let err = engine
        .create_job(&TenantId::new("acme"), new.clone())
        .await
        .unwrap_err();
    let loraflow::Error::InvalidArgument(v) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["webhooks[0].url", "webhooks[1].events[1]"]);

    // A tenant without a webhook secret cannot have webhooks at all.
    let mut ok = new.spec.clone();
    ok.webhooks = vec![WebhookSpec::new("https://example.com/hook", ["*"])];
    // In globex's own namespace (acme's is not globex's to name).
    ok.dataset.uri = ok
        .dataset
        .uri
        .replace("/datasets/acme/", "/datasets/globex/");
    let err = engine
        .create_job(
            &TenantId::new("globex"),
            NewJob {
                spec: ok,
                request_id: None,
            },
        )
        .await
        .unwrap_err();
    let loraflow::Error::InvalidArgument(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.0[0].field, "webhooks");
    assert!(v.0[0].description.contains("globex"), "{v}");
    assert_eq!(
        engine.store().feed().head().await.unwrap(),
        0,
        "nothing written"
    );
    engine.shutdown().await;
}
