//! A step outcome never travels as a large message. A worker whose step
//! returns an outcome over the limit does not send it: the step fails at
//! once with `OUTCOME_TOO_LARGE`, not retryable, and the job fails with
//! `StepFailed` (regression: a 50,000-file dataset made every worker resend
//! `CompleteStep` every 30 s until its lease expired, then again on the
//! next attempt). The same holds when the server, with a smaller message
//! limit than the worker's, refuses the completion as too large.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::server::{Backend, ServerSetup, TestServer};
use common::worker::bare_worker;
use common::{create_job, spec, wait_event};
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::ids::TenantId;
use loraflow::core::job::{FailureReason, JobEvent, StepError, StepErrorKind};
use loraflow::core::workflow::StepKind;
use loraflow::executors::worker::OutcomeLimits;
use tokio_util::sync::CancellationToken;

/// A `validate_dataset` stand-in that reports a file list inline, as the
/// old validate step did: `files` names in its outputs.
#[derive(Debug, Clone)]
struct InlineFileList {
    files: usize,
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl Executor for InlineFileList {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::VALIDATE_DATASET.into()]
    }

    async fn run(&self, _: &StepAssignment, _: &StepContext) -> Result<StepOutput, StepError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let names: Vec<String> = (0..self.files)
            .map(|i| format!("extra/file-{i:06}.txt"))
            .collect();
        Ok(StepOutput {
            outputs: serde_json::json!({ "files": names }),
            ..Default::default()
        })
    }
}

async fn fails_once_for_good(
    max_message_bytes: Option<usize>,
    limits: OutcomeLimits,
    files: usize,
) {
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        ServerSetup {
            max_message_bytes,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let runs = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let worker = bare_worker(server.addr, server.tmp.path(), 1, 1)
        .with(Arc::new(InlineFileList {
            files,
            runs: runs.clone(),
        }))
        .with_outcome_limits(limits);
    let running = tokio::spawn(worker.run(stop.clone()));
    let started = Instant::now();
    let job = create_job(&server.engine, spec(&server.dataset_uri)).await;
    let acme = TenantId::new("acme");
    let failed = wait_event(&server.engine, &acme, &job, |e| {
        matches!(e, JobEvent::JobFailed(_))
    })
    .await;
    let JobEvent::JobFailed(failed) = failed else {
        unreachable!()
    };
    assert_eq!(
        failed.reason,
        FailureReason::StepFailed,
        "{}",
        failed.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failed in {:?}, not after retries",
        started.elapsed()
    );
    let history = server.engine.history(&acme, &job).await.unwrap();
    let step_failures: Vec<StepError> = history
        .iter()
        .filter_map(|e| match &e.payload {
            JobEvent::StepFailed(f) => Some(f.error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        step_failures.len(),
        1,
        "one attempt, not retried: {step_failures:?}"
    );
    let error = &step_failures[0];
    assert_eq!(error.kind, StepErrorKind::Internal);
    assert!(!error.retryable);
    assert!(
        error.message.starts_with("OUTCOME_TOO_LARGE"),
        "{}",
        error.message
    );
    assert!(
        error.message.len() <= 8 * 1024,
        "the error itself is bounded"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.payload, JobEvent::StepCompleted(_))),
        "nothing was completed"
    );
    stop.cancel();
    running.await.unwrap();
    server.stop().await;
}

/// The worker measures the encoded outcome and never sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_over_the_worker_s_limit_fails_the_step_once() {
    // 50,000 names: about 1.3 MB encoded, over the default 1 MiB.
    fails_once_for_good(None, OutcomeLimits::default(), 50_000).await;
}

/// The server's message limit is smaller than the worker's outcome limit:
/// the completion is refused as too large, and the worker fails the step
/// rather than resend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_server_refuses_as_too_large_fails_the_step_once() {
    fails_once_for_good(Some(64 * 1024), OutcomeLimits::default(), 10_000).await;
}
