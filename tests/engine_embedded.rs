//! The embedded engine, end to end: a real SQLite file and artifact folder,
//! the built-in executors for validation, labelling and publishing.

use crate::common;

use std::time::Duration;

use common::*;
use loraflow::core::ids::TenantId;
use loraflow::core::job::{FailureReason, JobEvent, JobState, StepErrorKind};
use loraflow::executors::{Label, Publish, ValidateDataset, ValidateOptions};
use loraflow::{Engine, NewJob};

struct Setup {
    tmp: tempfile::TempDir,
    engine: Engine,
    dataset_uri: String,
}

async fn setup(trainer: FileTrainer) -> Setup {
    setup_with(trainer, loraflow::config::SchedulerConfig::default()).await
}

async fn setup_with(trainer: FileTrainer, scheduler: loraflow::config::SchedulerConfig) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .scheduler(scheduler)
        .store(format!(
            "sqlite://{}",
            tmp.path().join("loraflow.db").display()
        ))
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .workdir(tmp.path().join("work"))
        .executor(ValidateDataset {
            options: ValidateOptions {
                min_side: 32,
                ..Default::default()
            },
        })
        .executor(Label::default())
        .executor(trainer)
        .executor(FileSampler)
        .executor(Publish {
            destination: format!("file://{}", tmp.path().join("published").display()),
        })
        .build()
        .await
        .unwrap();
    dataset(&tmp.path().join("upload"), 3);
    let (dataset_uri, _) = engine
        .artifacts()
        .upload_dir(&tmp.path().join("upload"), "datasets/acme/corgi")
        .await
        .unwrap();
    Setup {
        tmp,
        engine,
        dataset_uri,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_from_creation_to_publication() {
    let s = setup(FileTrainer::default()).await;
    let tenant = TenantId::new("acme");
    let job = s
        .engine
        .create_job(
            &tenant,
            NewJob {
                spec: spec(&s.dataset_uri),
                request_id: None,
            },
        )
        .await
        .unwrap();
    let id = job.status.job_id.clone();
    assert!(matches!(
        job.status.state,
        JobState::Submitted | JobState::Processing
    ));

    wait_event(&s.engine, &tenant, &id, |e| {
        matches!(e, JobEvent::ReviewRequested(_))
    })
    .await;
    let view = s.engine.get_job(&tenant, &id).await.unwrap();
    assert_eq!(view.status.state, JobState::InReview);
    assert_eq!(
        view.status.epochs.len(),
        2,
        "tiny-sd trains 2 epochs by default"
    );
    assert!(
        view.status
            .epochs
            .values()
            .all(|e| e.lora.is_some() && e.samples.len() == 1)
    );

    s.engine
        .approve(&tenant, &id, 2, "reviewer", Some(view.status.sequence))
        .await
        .unwrap();
    wait_event(&s.engine, &tenant, &id, |e| {
        matches!(e, JobEvent::JobPublished(_))
    })
    .await;
    let view = s.engine.get_job(&tenant, &id).await.unwrap();
    assert_eq!(view.status.state, JobState::Published);
    let published = view.status.published.unwrap();
    let path = s
        .tmp
        .path()
        .join(format!("published/corgi/v1/{id}/corgi-v1.safetensors"));
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        format!("lora {id} epoch 2")
    );
    assert_eq!(published.epoch, Some(2));

    // Every stored event is on the job's hash chain.
    s.engine.store().verify_job(&id).await.unwrap();
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_and_the_job_still_completes() {
    let s = setup(FileTrainer {
        fail_first: Some(StepErrorKind::Unavailable),
        ..Default::default()
    })
    .await;
    // Short backoffs: the retry policy comes from the workflow.
    let mut spec = spec(&s.dataset_uri);
    let model = s
        .engine
        .catalogue()
        .base_model(&"tiny-sd".into())
        .unwrap()
        .clone();
    let mut wf =
        loraflow::core::workflow::standard_lora(&model, loraflow::core::catalogue::Engine::Native);
    for step in &mut wf.steps {
        step.retry.initial_backoff = Duration::from_millis(50);
    }
    spec.workflow = Some(wf);
    let tenant = TenantId::new("acme");
    let id = s
        .engine
        .create_job(
            &tenant,
            NewJob {
                spec,
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id;
    wait_event(&s.engine, &tenant, &id, |e| {
        matches!(e, JobEvent::ReviewRequested(_))
    })
    .await;
    let history = s.engine.history(&tenant, &id).await.unwrap();
    let retried: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.payload {
            JobEvent::StepRetried(r) => Some((r.step_id.to_string(), r.next_attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(retried, [("train".to_owned(), 2)]);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_dataset_fails_the_job_naming_the_file() {
    let s = setup(FileTrainer::default()).await;
    std::fs::write(s.tmp.path().join("bad/broken.png"), b"not a png").unwrap_or_else(|_| {
        std::fs::create_dir_all(s.tmp.path().join("bad")).unwrap();
        std::fs::write(s.tmp.path().join("bad/broken.png"), b"not a png").unwrap();
    });
    std::fs::write(s.tmp.path().join("bad/ok.png"), png(64, 64, 1)).unwrap();
    let (uri, _) = s
        .engine
        .artifacts()
        .upload_dir(&s.tmp.path().join("bad"), "datasets/acme/bad")
        .await
        .unwrap();
    let tenant = TenantId::new("acme");
    let id = s
        .engine
        .create_job(
            &tenant,
            NewJob {
                spec: spec(&uri),
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id;
    let JobEvent::JobFailed(f) = wait_event(&s.engine, &tenant, &id, |e| {
        matches!(e, JobEvent::JobFailed(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(f.reason, FailureReason::InvalidDataset);
    assert!(
        f.message.contains("broken.png: not an image"),
        "{}",
        f.message
    );
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dataset_is_refused_before_anything_is_written() {
    let s = setup(FileTrainer::default()).await;
    let tenant = TenantId::new("acme");
    let before = s.engine.store().feed().head().await.unwrap();
    let err = s
        .engine
        .create_job(
            &tenant,
            NewJob {
                spec: spec(&s.dataset_uri.replace("/corgi/", "/nowhere/")),
                request_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, loraflow::Error::InvalidArgument(_)),
        "{err:?}"
    );
    assert_eq!(s.engine.store().feed().head().await.unwrap(), before);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_returns_the_same_job_and_tenants_are_isolated() {
    let s = setup(FileTrainer::default()).await;
    let acme = TenantId::new("acme");
    let new = || NewJob {
        spec: spec(&s.dataset_uri),
        request_id: Some("6f1d2c3e-0000-4000-8000-000000000001".into()),
    };
    let a = s.engine.create_job(&acme, new()).await.unwrap();
    let b = s.engine.create_job(&acme, new()).await.unwrap();
    assert_eq!(a.status.job_id, b.status.job_id);
    // The same request id from another tenant is another job (of its own
    // upload of the same folder: it may not name acme's).
    let other = TenantId::new("globex");
    let (globex_uri, _) = s
        .engine
        .artifacts()
        .upload_dir(&s.tmp.path().join("upload"), "datasets/globex/corgi")
        .await
        .unwrap();
    let mut of_globex = new();
    of_globex.spec.dataset.uri = globex_uri;
    let c = s.engine.create_job(&other, of_globex).await.unwrap();
    assert_ne!(c.status.job_id, a.status.job_id);
    assert!(matches!(
        s.engine.get_job(&other, &a.status.job_id).await,
        Err(loraflow::Error::JobNotFound(_))
    ));
    assert!(matches!(
        s.engine
            .cancel(&other, &a.status.job_id, "x", "mallory", None)
            .await,
        Err(loraflow::Error::JobNotFound(_))
    ));
    s.engine.shutdown().await;
}

/// Heartbeats every few milliseconds, most of them answered without a write
/// (progress is recorded at most every 30 ms), never stop a live step. (A
/// heartbeat that came before the scheduler had read its lease from the feed
/// used to be answered "cancel"; that race is too narrow to force here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_right_after_a_lease_do_not_cancel_it() {
    let s = setup_with(
        FileTrainer {
            epoch_time: Duration::from_millis(40),
            ..Default::default()
        },
        loraflow::config::SchedulerConfig {
            heartbeat_interval: Duration::from_millis(2),
            progress_interval: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .await;
    let tenant = TenantId::new("acme");
    for _ in 0..3 {
        let id = s
            .engine
            .create_job(
                &tenant,
                NewJob {
                    spec: spec(&s.dataset_uri),
                    request_id: None,
                },
            )
            .await
            .unwrap()
            .status
            .job_id;
        wait_event(&s.engine, &tenant, &id, |e| {
            matches!(e, JobEvent::ReviewRequested(_))
        })
        .await;
        let history = s.engine.history(&tenant, &id).await.unwrap();
        assert!(
            history
                .iter()
                .any(|e| matches!(e.payload, JobEvent::StepProgressed(_)))
        );
        assert!(
            !history
                .iter()
                .any(|e| matches!(e.payload, JobEvent::LeaseExpired(_)))
        );
    }
    s.engine.shutdown().await;
}
