//! The gRPC API over real loopback sockets, on SQLite and PostgreSQL:
//! idempotent creation, pagination, watch with reconnect, cancel, review,
//! every error mapping, tenant isolation, tokens and etags. Transport
//! matters (size limits, health, reflection, TLS, spans) are in
//! `grpc_transport.rs`.

use crate::common;
use crate::on_both_backends;

use std::collections::BTreeSet;

use common::server::{Backend, ServerSetup, TestServer};
use common::*;
use futures::StreamExt;
use loraflow_proto::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

fn create(uri: &str, request_id: &str) -> pb::CreateJobRequest {
    let mut spec: pb::JobSpec = spec(uri).into();
    spec.labels.insert("team".into(), "vision".into());
    pb::CreateJobRequest {
        job: Some(spec),
        request_id: request_id.into(),
        validate_only: false,
    }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn server(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerSetup::default()).await
}

on_both_backends! {
    async fn create_is_idempotent_by_request_id(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let rid = "0b6c6f1e-1111-4222-8333-444455556666";
        let a = c.create_job(create(&s.dataset_uri, rid)).await.unwrap().into_inner();
        let b = c.create_job(create(&s.dataset_uri, rid)).await.unwrap().into_inner();
        assert_eq!(a.job_id, b.job_id);
        assert_eq!(a.name, format!("jobs/{}", a.job_id));
        assert_eq!(a.tenant, "acme");
        assert_eq!(a.state, pb::JobState::Submitted as i32);
        let other = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        assert_ne!(other.job_id, a.job_id);
        let list = c.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
        assert_eq!(list.jobs.len(), 2, "the repeat made no second job");
        s.stop().await;
    }

    async fn list_pages_through_every_job_once(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let mut made = BTreeSet::new();
        for _ in 0..7 {
            made.insert(c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner().job_id);
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = c
                .list_jobs(pb::ListJobsRequest { page_size: 3, page_token: token.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.jobs.len() <= 3);
            seen.extend(page.jobs.into_iter().map(|j| j.job_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 7);
        assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), made);

        // Filters: by label and by state.
        let by_label = c
            .list_jobs(pb::ListJobsRequest { labels: vec!["team=vision".into()], ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_label.jobs.len(), 7);
        let failed = c
            .list_jobs(pb::ListJobsRequest { state: pb::JobState::Failed as i32, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(failed.jobs.is_empty());

        // A token used with other filters is refused; a negative page size too.
        let first = c.list_jobs(pb::ListJobsRequest { page_size: 3, ..Default::default() }).await.unwrap().into_inner();
        let err = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 3,
                page_token: first.next_page_token,
                base_model: "sd15".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), ["page_token"]);
        let err = c.list_jobs(pb::ListJobsRequest { page_size: -1, ..Default::default() }).await.unwrap_err();
        assert_eq!(fields(&err), ["page_size"]);
        s.stop().await;
    }

    async fn watch_resumes_from_a_position_without_losing_events(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let job = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        let mut stream = c
            .watch_job(pb::WatchJobRequest { job_id: job.job_id.clone(), from_position: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(stream.next().await.unwrap().unwrap());
        }
        let types: Vec<_> = first.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["JobCreated", "JobSubmitted", "StepQueued"]);
        drop(stream);

        // While the client is away, the job is cancelled.
        c.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "changed my mind".into(), etag: String::new() })
            .await
            .unwrap();
        // Reconnect after the last position seen: exactly the missed events,
        // then the stream ends because the job is over.
        let last = first.last().unwrap().position;
        let rest: Vec<_> = c
            .watch_job(pb::WatchJobRequest { job_id: job.job_id.clone(), from_position: last })
            .await
            .unwrap()
            .into_inner()
            .map(|e| e.unwrap())
            .collect()
            .await;
        let types: Vec<_> = rest.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["JobCancelled"]);
        assert!(rest[0].position > last);
        assert!(rest[0].payload_json.contains("changed my mind"));
        s.stop().await;
    }

    async fn cancel_moves_the_job_to_failed_and_repeats_are_harmless(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let job = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        let cancelled = c
            .cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "".into(), etag: job.etag.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cancelled.state, pb::JobState::Failed as i32);
        assert_eq!(cancelled.failure.unwrap().reason, pb::FailureReason::Cancelled as i32);
        assert!(cancelled.steps.iter().all(|s| s.status == pb::StepStatus::Dropped as i32));
        // Cancelling again changes nothing and is not an error.
        let again = c
            .cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "".into(), etag: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.etag, cancelled.etag);
        let history = c.get_job_history(pb::GetJobHistoryRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
        assert_eq!(history.events.last().unwrap().event_type, "JobCancelled");
        assert_eq!(history.events.iter().filter(|e| e.event_type == "JobCancelled").count(), 1);
        assert!(history.events.iter().all(|e| e.metadata.contains_key("hash")));
        s.stop().await;
    }

    async fn errors_map_to_their_codes(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;

        // INVALID_ARGUMENT, one field violation per bad field.
        let mut bad = create(&s.dataset_uri, "");
        let spec = bad.job.as_mut().unwrap();
        spec.params.insert("learning_rate".into(), pb::ParamValue { kind: Some(pb::param_value::Kind::DoubleValue(5.0)) });
        spec.params.insert("epochs".into(), pb::ParamValue { kind: Some(pb::param_value::Kind::IntValue(0)) });
        spec.priority = 1000;
        let err = c.create_job(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), ["job.params.epochs", "job.params.learning_rate", "job.priority"]);
        assert!(err.message().contains("learning_rate 5 is above the maximum 0.01"), "{}", err.message());

        // A missing dataset (in the tenant's own namespace: one outside it is
        // PERMISSION_DENIED, see security.rs): INVALID_ARGUMENT on
        // job.dataset.uri, and nothing written.
        let head = s.engine.store().feed().head().await.unwrap();
        let missing = s.dataset_uri.replace("/corgi/", "/no-such-dataset/");
        let err = c.create_job(create(&missing, "")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), ["job.dataset.uri"]);
        assert_eq!(s.engine.store().feed().head().await.unwrap(), head);

        // NOT_FOUND.
        let err = c.get_job(pb::GetJobRequest { job_id: "no-such-job".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // FAILED_PRECONDITION, naming the state.
        let job = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        let err = c
            .approve_job(pb::ApproveJobRequest { job_id: job.job_id.clone(), epoch: 1, etag: String::new(), step: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("Submitted"), "{}", err.message());

        // ABORTED on a stale etag; nothing written.
        let stale = (job.etag.parse::<u64>().unwrap() - 1).to_string();
        let err = c
            .cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "x".into(), etag: stale })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        let now = c.get_job(pb::GetJobRequest { job_id: job.job_id.clone(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(now.state, pb::JobState::Submitted as i32);

        // UNAVAILABLE when the operator blocks a model or closes the service.
        let mut status = s.engine.service_status();
        status.blocked_models.insert("tiny-sd".into());
        status.message = Some("tiny-sd is being upgraded".into());
        s.engine.set_service_status(status.clone());
        let err = c.create_job(create(&s.dataset_uri, "")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("tiny-sd is being upgraded"), "{}", err.message());
        status.blocked_models.clear();
        status.available = false;
        status.message = Some("maintenance until 14:00".into());
        s.engine.set_service_status(status);
        let err = c.create_job(create(&s.dataset_uri, "")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("maintenance until 14:00"));
        let reported = c.get_service_status(pb::GetServiceStatusRequest::default()).await.unwrap().into_inner();
        assert!(!reported.available);
        s.stop().await;
    }

    async fn tenants_are_isolated_and_tokens_required(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut acme = s.client(Some("t-acme")).await;
        let mut globex = s.client(Some("t-globex")).await;
        let job = acme.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        // Another tenant cannot see or touch it: NOT_FOUND, not PERMISSION_DENIED.
        let get = globex.get_job(pb::GetJobRequest { job_id: job.job_id.clone(), ..Default::default() }).await.unwrap_err();
        assert_eq!(get.code(), Code::NotFound);
        let cancel = globex
            .cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "x".into(), etag: String::new() })
            .await
            .unwrap_err();
        assert_eq!(cancel.code(), Code::NotFound);
        let watch = globex.watch_job(pb::WatchJobRequest { job_id: job.job_id.clone(), from_position: 0 }).await;
        assert_eq!(watch.err().map(|e| e.code()), Some(Code::NotFound));
        assert!(globex.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());

        // No token, a wrong one, or an executor's token: UNAUTHENTICATED.
        for token in [None, Some("nope"), Some("e-gpu-1")] {
            let mut c = s.client(token).await;
            let err = c.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "token {token:?}");
        }
        // An executor token speaks only for its executor.
        let mut ex = s.executor_client(Some("e-gpu-1")).await;
        let err = ex
            .poll_step(pb::PollStepRequest { executor_id: "gpu-2".into(), wait: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let mut ex = s.executor_client(Some("t-acme")).await;
        let err = ex.poll_step(pb::PollStepRequest { executor_id: "gpu-1".into(), wait: None }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        s.stop().await;
    }

    async fn catalogue_calls_describe_what_a_client_may_submit(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let models = c.list_base_models(pb::ListBaseModelsRequest::default()).await.unwrap().into_inner();
        assert!(models.base_models.iter().any(|m| m.id == "tiny-sd"));
        // (Only pairs this build has an executor for are offered: see tests/unservable.rs.)
        let schema = c
            .get_parameter_schema(pb::GetParameterSchemaRequest { base_model: "sdxl".into(), engine: "kohya".into() })
            .await
            .unwrap()
            .into_inner();
        assert!(schema.params.iter().any(|p| p.name == "learning_rate"));
        assert!(schema.params.iter().any(|p| p.name == "text_encoder_lr"));
        assert!(schema.profiles.iter().any(|p| p.name == "quick_test"));
        // An unknown model is NOT_FOUND; a known one the engine cannot train
        // is INVALID_ARGUMENT on `engine`.
        let err = c
            .get_parameter_schema(pb::GetParameterSchemaRequest { base_model: "nope".into(), engine: "native".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains("\"nope\""), "{}", err.message());
        assert_eq!(err.get_error_details().error_info().unwrap().reason, "BASE_MODEL_NOT_FOUND");
        let err = c
            .get_parameter_schema(pb::GetParameterSchemaRequest { base_model: "tiny-sd".into(), engine: "kohya".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), ["engine"]);
        s.stop().await;
    }

    async fn watching_a_finished_job_from_its_last_position_ends(backend: Backend) {
        let Some(s) = server(backend).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let job = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        let watcher = c.clone();
        let watch = |from_position: u64| {
            let mut c = watcher.clone();
            let job_id = job.job_id.clone();
            async move {
                let stream = c
                    .watch_job(pb::WatchJobRequest { job_id, from_position })
                    .await
                    .unwrap()
                    .into_inner();
                // Bounded: a stream that never ends fails the test, not CI.
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    stream.map(|e| e.unwrap()).collect::<Vec<_>>(),
                )
                .await
                .expect("the stream of a finished job ends")
            }
        };
        // Followed live from the last event while running: the stream ends
        // after the cancel.
        let head = c
            .get_job_history(pb::GetJobHistoryRequest { job_id: job.job_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .events
            .last()
            .unwrap()
            .position;
        // Whichever of the watch and the cancel reaches the server first,
        // the watch reads after `head` and so sees the cancel.
        let live = tokio::spawn(watch(head));
        c.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone(), reason: "done".into(), etag: String::new() })
            .await
            .unwrap();
        let live = live.await.unwrap();
        let types: Vec<_> = live.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["JobCancelled"]);
        let last = live[0].position;
        // From the finished job's last position, or any later one: nothing
        // more will come, so the stream ends at once, empty.
        assert!(watch(last).await.is_empty());
        assert!(watch(last + 1_000_000).await.is_empty());
        // From before it: the missed events, then the end.
        let all = watch(0).await;
        assert_eq!(all.last().unwrap().event_type, "JobCancelled");
        assert_eq!(all.last().unwrap().position, last);
        s.stop().await;
    }
}

on_both_backends! {
    async fn approve_and_reject_are_validated(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup { executors: true, ..Default::default() }).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let a = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        let b = c.create_job(create(&s.dataset_uri, "")).await.unwrap().into_inner();
        for job in [&a, &b] {
            let stream = c
                .watch_job(pb::WatchJobRequest { job_id: job.job_id.clone(), from_position: 0 })
                .await
                .unwrap()
                .into_inner();
            let mut stream = std::pin::pin!(stream);
            while let Some(e) = stream.next().await {
                if e.unwrap().event_type == "ReviewRequested" {
                    break;
                }
            }
        }
        let in_review = c.get_job(pb::GetJobRequest { job_id: a.job_id.clone(), ..Default::default() }).await.unwrap().into_inner();
        // Only produced epochs can be approved.
        let err = c
            .approve_job(pb::ApproveJobRequest { job_id: a.job_id.clone(), epoch: 9, etag: String::new(), step: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("available epochs: [1, 2]"), "{}", err.message());
        // A reject needs a reason.
        let err = c
            .reject_job(pb::RejectJobRequest { job_id: b.job_id.clone(), reason: " ".into(), etag: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let approved = c
            .approve_job(pb::ApproveJobRequest { job_id: a.job_id.clone(), epoch: 2, etag: in_review.etag.clone(), step: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(approved.approved_epoch, Some(2));
        let rejected = c
            .reject_job(pb::RejectJobRequest { job_id: b.job_id.clone(), reason: "blurry".into(), etag: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rejected.failure.unwrap().reason, pb::FailureReason::Rejected as i32);
        // A rejected job can be retried: as a new job with the same spec.
        let retried = c
            .retry_job(pb::RetryJobRequest { job_id: b.job_id.clone(), request_id: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_ne!(retried.job_id, b.job_id);
        assert_eq!(retried.spec.unwrap().labels.get("retry_of"), Some(&b.job_id));
        // An approved job is not retried.
        let err = c.retry_job(pb::RetryJobRequest { job_id: a.job_id.clone(), request_id: String::new() }).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        s.stop().await;
    }
}
