//! The examples, run as a user would run them: `embed` trains and publishes
//! in-process (and its custom step refuses bad captions); `grpc_client`
//! drives a real server on a loopback port whose training runs on a real
//! worker that pulls its steps over gRPC; `replay_audit` verifies the job
//! that produced.

use crate::common;

#[allow(dead_code)]
#[path = "../examples/embed.rs"]
mod embed;
#[allow(dead_code)]
#[path = "../examples/grpc_client.rs"]
mod grpc_client;
#[allow(dead_code)]
#[path = "../examples/replay_audit.rs"]
mod replay_audit;

use std::sync::Arc;

use common::server::{Backend, ServerSetup, TestServer};
use common::worker::remote_worker;
use loraflow::core::job::{FailureReason, JobState};
use loraflow::executors::native::NativeOptions;
use loraflow::executors::worker::Worker;
use loraflow::executors::{NativeSampler, NativeTrainer};
use loraflow_proto::pb::v1 as pb;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_trains_and_publishes_through_a_custom_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = embed::run(tmp.path(), 3).await.unwrap();
    assert_eq!(out.job.state, JobState::Published, "{:?}", out.job.failure);
    let check = out
        .job
        .steps
        .iter()
        .find(|s| s.id.as_str() == "check")
        .unwrap();
    assert_eq!(check.kind.as_str(), "caption_check");
    // The custom step ran between labelling and training.
    let order: Vec<&str> = out.job.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        order,
        [
            "validate", "label", "check", "train", "sample", "review", "publish"
        ]
    );
    let published = out.job.published.as_ref().unwrap();
    let path = url::Url::parse(&published.uri)
        .unwrap()
        .to_file_path()
        .unwrap();
    assert!(path.starts_with(tmp.path().canonicalize().unwrap().join("published")));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        published.size_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_refuses_short_captions_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let out = embed::run(tmp.path(), 50).await.unwrap();
    assert_eq!(out.job.state, JobState::Failed);
    let failure = out.job.failure.as_ref().unwrap();
    assert_eq!(failure.reason, FailureReason::StepFailed);
    assert!(
        failure.message.contains("fewer than 50 words") && failure.message.contains(".png"),
        "the refusal names the images: {}",
        failure.message
    );
    let train_leases = out
        .events
        .iter()
        .filter(|t| t.as_str() == "StepLeased")
        .count();
    assert_eq!(
        train_leases, 3,
        "validate, label and check ran; train never did"
    );
}

/// The remote worker with the native trainer and sampler.
fn native_worker(server: &TestServer) -> Worker {
    let native = NativeOptions::new(embed::assets());
    remote_worker(server)
        .with(Arc::new(NativeTrainer::new(native.clone()).unwrap()))
        .with(Arc::new(NativeSampler::new(native).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_client_follows_a_job_trained_by_a_remote_worker_and_the_audit_verifies_it() {
    let server = TestServer::start(Backend::Sqlite, ServerSetup::default())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(native_worker(&server).run(stop.clone()));

    let out = grpc_client::run(
        &format!("http://{}", server.addr),
        "t-acme",
        &server.dataset_uri,
    )
    .await
    .unwrap();
    assert_eq!(
        out.job.state(),
        pb::JobState::Published,
        "{:?}",
        out.job.failure
    );
    // Nothing was missed: the stream held every event of the job, in order.
    let history = server.client(Some("t-acme")).await;
    let mut history = history;
    let events = history
        .get_job_history(pb::GetJobHistoryRequest {
            job_id: out.job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
    assert_eq!(out.events, types);
    assert!(types.contains(&"JobApproved".to_owned()));
    let leased_by: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "StepLeased")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
            v["StepLeased"]["executor_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(leased_by.len(), 5, "every step but the review gate");
    assert!(leased_by.iter().all(|e| e == "gpu-1"), "{leased_by:?}");

    stop.cancel();
    worker.await.unwrap();
    let store = format!(
        "sqlite://{}",
        server.tmp.path().join("loraflow.db").display()
    );
    // The auditor opens the same SQLite file beside the running server.
    let audit = replay_audit::run(&store, &out.job.job_id).await.unwrap();
    server.stop().await;
    assert!(audit.is_intact(), "{:?}", audit.report);
    let lines = replay_audit::lines(&audit);
    assert_eq!(lines.len(), types.len());
    assert!(lines.last().unwrap().ends_with("-> Published"), "{lines:?}");
}
