//! Timeouts and backoff on an injected clock: tokio's paused time drives
//! the engine's clock (`TokioClock`), its timers and the lease deadlines, so
//! minutes of heartbeat timeouts and retry backoff pass in no real time and
//! the instants in the events are exact.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::noop::{NOOP, spec_with, three_steps};
use loraflow::core::executor::Capabilities;
use loraflow::core::ids::{ExecutorId, JobId, TenantId};
use loraflow::core::job::step::ExpiryCause;
use loraflow::core::job::{FailureReason, JobEvent};
use loraflow::core::workflow::{RetryPolicy, StepKind, Timeouts};
use loraflow::{Engine, EngineBuilder};

const HEARTBEAT: Duration = Duration::from_secs(30);
const BACKOFF: Duration = Duration::from_secs(60);

/// An engine on the in-process log, configured further by `configure`,
/// with the test dataset uploaded; the dataset's URI.
async fn engine_with(
    dir: &std::path::Path,
    configure: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> (Engine, String) {
    let builder = Engine::builder()
        .store("memory:")
        .artifacts(dir.join("artifacts").display().to_string())
        .workdir(dir.join("work"));
    let engine = configure(builder).build().await.unwrap();
    common::dataset(&dir.join("upload"), 3);
    let (uri, _) = engine
        .artifacts()
        .upload_dir(&dir.join("upload"), "datasets/acme/corgi")
        .await
        .unwrap();
    (engine, uri)
}

/// An engine that knows the `noop` kind, and executor `x`, which runs it.
async fn engine(dir: &std::path::Path) -> (Engine, String) {
    let (engine, uri) = engine_with(dir, |b| b.custom_kind(NOOP)).await;
    engine
        .register_executor(
            ExecutorId::new("x"),
            Capabilities {
                kinds: [StepKind::new(NOOP)].into(),
                max_concurrent_steps: 1,
                ..Capabilities::default()
            },
        )
        .unwrap();
    (engine, uri)
}

/// The first event `pick` accepts, waiting on the paused clock (polls
/// are capped by the engine's poll timeout; tens of virtual minutes are
/// allowed).
async fn first<T>(engine: &Engine, job: &JobId, pick: impl Fn(&JobEvent) -> Option<T>) -> T {
    for _ in 0..3600 {
        if let Some(t) = events(engine, job).await.iter().find_map(&pick) {
            return t;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!(
        "no such event after an hour: {:?}",
        events(engine, job).await
    )
}

/// Poll until a step is leased (each poll waits at most the poll timeout).
async fn poll(engine: &Engine, x: &ExecutorId) -> loraflow::engine::Polled {
    for _ in 0..100 {
        if let Some(p) = engine.poll_step(x, Duration::from_secs(30)).await.unwrap() {
            return p;
        }
    }
    panic!("nothing was leased in 50 minutes")
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).as_seconds_f64()
}

async fn events(engine: &Engine, job: &JobId) -> Vec<JobEvent> {
    let tenant = TenantId::new("acme");
    let h = engine.history(&tenant, job).await.unwrap();
    h.into_iter().map(|e| e.payload).collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_lease_expires_after_its_heartbeat_timeout_and_retries_back_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, dataset) = engine(tmp.path()).await;
    let retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: BACKOFF,
        backoff_multiplier: 2.0,
        max_backoff: Duration::from_secs(600),
        jitter: 0.0,
    };
    let spec = spec_with(&dataset, three_steps(HEARTBEAT, retry));
    let job = common::create_job(&engine, spec).await;
    let x = ExecutorId::new("x");

    let lease1 = engine
        .poll_step(&x, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("s1 is ready");
    assert_eq!(lease1.assignment.attempt, 1);
    let leased_at = lease1.lease.deadline - chrono::Duration::from_std(HEARTBEAT).unwrap();
    // Nothing is due before the deadline: a poll in between finds no work.
    assert!(engine.poll_step(&x, HEARTBEAT / 2).await.unwrap().is_none());
    assert!(
        !events(&engine, &job)
            .await
            .iter()
            .any(|e| matches!(e, JobEvent::LeaseExpired(_)))
    );

    // The retry is queued behind its backoff; polls before it ends get nothing.
    let second = poll(&engine, &x).await;
    assert_eq!(second.assignment.attempt, 2);
    let h = events(&engine, &job).await;
    let expired = h
        .iter()
        .find_map(|e| match e {
            JobEvent::LeaseExpired(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(expired.cause, ExpiryCause::HeartbeatTimeout);
    let waited = secs(leased_at, expired.expired_at);
    assert!(
        (30.0..32.0).contains(&waited),
        "expired {waited} s after the lease"
    );
    let retried = h
        .iter()
        .find_map(|e| match e {
            JobEvent::StepRetried(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((retried.next_attempt, retried.backoff_ms), (2, 60_000));
    let released_at = second.lease.deadline - chrono::Duration::from_std(HEARTBEAT).unwrap();
    let backoff = secs(expired.expired_at, released_at);
    assert!(
        (60.0..62.0).contains(&backoff),
        "leased again {backoff} s after expiry"
    );

    // The last attempt expires too: the job fails, its retries exhausted.
    let failed = first(&engine, &job, |e| match e {
        JobEvent::JobFailed(f) => Some(f.clone()),
        _ => None,
    })
    .await;
    assert_eq!(failed.reason, FailureReason::RetriesExhausted);
    let waited = secs(released_at, failed.failed_at);
    assert!(
        (30.0..32.0).contains(&waited),
        "failed {waited} s after the second lease"
    );
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_step_no_executor_takes_in_time_fails_its_schedule_to_start_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, dataset) = engine(tmp.path()).await;
    let mut workflow = three_steps(
        HEARTBEAT,
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    );
    workflow.steps[0].timeouts = Timeouts {
        schedule_to_start: Some(Duration::from_secs(300)),
        ..workflow.steps[0].timeouts
    };
    // Only an executor of another kind is around.
    engine
        .register_executor(
            ExecutorId::new("x"),
            Capabilities {
                kinds: [StepKind::new(StepKind::LABEL)].into(),
                max_concurrent_steps: 1,
                ..Capabilities::default()
            },
        )
        .unwrap();
    let spec = spec_with(&dataset, workflow);
    let job = common::create_job(&engine, spec).await;
    let failed = first(&engine, &job, |e| match e {
        JobEvent::JobFailed(f) => Some(f.clone()),
        _ => None,
    })
    .await;
    let h = events(&engine, &job).await;
    let queued = h
        .iter()
        .find_map(|e| match e {
            JobEvent::StepQueued(q) => Some(q.queued_at),
            _ => None,
        })
        .unwrap();
    let waited = secs(queued, failed.failed_at);
    assert!(
        (300.0..302.0).contains(&waited),
        "failed {waited} s after queueing: {failed:?}"
    );
    assert_eq!(failed.reason, FailureReason::ScheduleTimeout);
    assert_eq!(failed.step_id.as_ref().map(|s| s.as_str()), Some("s1"));
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_running_step_s_eta_comes_from_its_measured_pace_and_queued_jobs_know_their_place() {
    use loraflow::config::SchedulerConfig;
    use loraflow::core::catalogue::ParamValue;
    use loraflow::core::workflow::{StepSpec, WorkflowSpec};

    let tmp = tempfile::tempdir().unwrap();
    // One in-process training slot: 10 epochs of 1 s each, 10 steps an epoch.
    let (engine, dataset) = engine_with(tmp.path(), |b| {
        b.scheduler(SchedulerConfig {
            heartbeat_interval: Duration::from_millis(100),
            poll_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_millis(100),
            ..SchedulerConfig::default()
        })
        .executor(common::FileTrainer {
            epoch_time: Duration::from_secs(1),
            ..Default::default()
        })
        .in_process_capabilities(Capabilities {
            max_concurrent_steps: 1,
            ..Capabilities::default()
        })
    })
    .await;
    let workflow = WorkflowSpec {
        steps: vec![
            StepSpec::new("train", StepKind::TRAIN),
            StepSpec::new("review", StepKind::REVIEW).after(&["train"]),
            StepSpec::new("publish", StepKind::PUBLISH).after(&["review"]),
        ],
    };
    let mut spec = spec_with(&dataset, workflow);
    spec.params.insert("epochs".into(), ParamValue::Int(10));
    let tenant = TenantId::new("acme");
    let a = &common::create_job(&engine, spec.clone()).await;
    let b = &common::create_job(&engine, spec).await;
    first(&engine, a, |e| {
        matches!(e, JobEvent::StepLeased(_)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let running = engine.get_job(&tenant, a).await.unwrap();
    let eta = running
        .eta
        .expect("an ETA once two progress reports came in");
    // What the recorded progress says: the pace between the first and the
    // latest report with a step count, and the steps left at that pace,
    // counted from now. (Epochs take a little over their second: the file
    // writes let paused time run ahead.)
    let reports: Vec<(DateTime<Utc>, u64)> = events(&engine, a)
        .await
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepProgressed(p) => Some((p.at, p.progress.step?)),
            _ => None,
        })
        .collect();
    let ((t0, s0), (t1, s1)) = (reports[0], *reports.last().unwrap());
    let rate = (s1 - s0) as f64 / secs(t0, t1);
    let expected = (100 - s1) as f64 / rate - secs(t1, engine.services().clock.now());
    assert!(
        (eta.as_secs_f64() - expected).abs() < 0.5 && expected > 4.0,
        "ETA {eta:?}, expected {expected:.2} s from {reports:?}"
    );
    assert_eq!(running.queue_position, None, "a running job is not queued");
    let waiting = engine.get_job(&tenant, b).await.unwrap();
    assert_eq!(
        waiting.queue_position,
        Some(0),
        "the second job is next in line"
    );
    assert_eq!(waiting.eta, None);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = engine.get_job(&tenant, a).await.unwrap().eta.unwrap();
    assert!(
        later < eta,
        "the ETA falls as training advances: {later:?} after {eta:?}"
    );
    engine.shutdown().await;
}
