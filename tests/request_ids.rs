//! Request ids make `create_job` and `retry` repeatable: a repeat returns
//! the first call's job, finishes it when the first call stopped halfway,
//! and never returns the job of the other call.

use crate::common;

use common::*;
use loraflow::core::ids::TenantId;
use loraflow::core::job::{CreateJob, JobCommand, JobState};
use loraflow::store::Metadata;
use loraflow::{Engine, NewJob};

struct Setup {
    _tmp: tempfile::TempDir,
    engine: Engine,
    dataset_uri: String,
}

/// An engine with no executors: jobs stay where the API leaves them.
async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .store(format!(
            "sqlite://{}",
            tmp.path().join("loraflow.db").display()
        ))
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .workdir(tmp.path().join("work"))
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
        _tmp: tmp,
        engine,
        dataset_uri,
    }
}

fn event_types(history: &[loraflow::store::StoredEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.payload.name()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_finishes_a_job_left_pending_between_create_and_submit() {
    let s = setup().await;
    let tenant = TenantId::new("acme");
    let rid = "5d1c8a4e-0c4b-4d59-9a53-3f0f4b6e7a21";
    let id = Engine::job_id_for_request(&tenant, rid);
    // The first call wrote `JobCreated` and stopped before the submit (the
    // process died), as its create would have: same id, same spec.
    let mut first = spec(&s.dataset_uri);
    first.tenant = tenant.clone();
    s.engine
        .store()
        .execute(
            &id,
            JobCommand::Create(CreateJob {
                job_id: id.clone(),
                spec: first,
            }),
            Metadata::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        s.engine
            .store()
            .load(&id)
            .await
            .unwrap()
            .unwrap()
            .job
            .state(),
        Some(JobState::Pending)
    );

    let repeat = NewJob {
        spec: spec(&s.dataset_uri),
        request_id: Some(rid.into()),
    };
    let job = s.engine.create_job(&tenant, repeat.clone()).await.unwrap();
    assert_eq!(job.status.job_id, id);
    assert_eq!(job.status.state, JobState::Submitted);
    let history = s.engine.history(&tenant, &id).await.unwrap();
    assert_eq!(
        event_types(&history),
        ["JobCreated", "JobSubmitted", "StepQueued"]
    );

    // Another repeat changes nothing.
    let again = s.engine.create_job(&tenant, repeat).await.unwrap();
    assert_eq!(again.status.job_id, id);
    assert_eq!(again.status.sequence, job.status.sequence);
    assert_eq!(s.engine.history(&tenant, &id).await.unwrap().len(), 3);
    s.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_retry_with_one_request_id_make_two_jobs() {
    let s = setup().await;
    let tenant = TenantId::new("acme");
    let rid = "same-request-id";
    let new = |request_id: Option<&str>| NewJob {
        spec: spec(&s.dataset_uri),
        request_id: request_id.map(Into::into),
    };
    // Two jobs to retry, failed by cancelling them.
    let mut failed = Vec::new();
    for _ in 0..2 {
        let j = s.engine.create_job(&tenant, new(None)).await.unwrap();
        s.engine
            .cancel(&tenant, &j.status.job_id, "stop", "alice", None)
            .await
            .unwrap();
        failed.push(j.status.job_id);
    }

    let created = s.engine.create_job(&tenant, new(Some(rid))).await.unwrap();
    let retried = s
        .engine
        .retry(&tenant, &failed[0], Some(rid.into()))
        .await
        .unwrap();
    assert_ne!(retried.status.job_id, created.status.job_id);
    assert_eq!(
        retried.status.labels.get("retry_of"),
        Some(&failed[0].to_string())
    );
    assert_eq!(retried.status.state, JobState::Submitted);

    // Each call's repeat returns its own job.
    let retried_again = s
        .engine
        .retry(&tenant, &failed[0], Some(rid.into()))
        .await
        .unwrap();
    assert_eq!(retried_again.status.job_id, retried.status.job_id);
    let created_again = s.engine.create_job(&tenant, new(Some(rid))).await.unwrap();
    assert_eq!(created_again.status.job_id, created.status.job_id);
    assert!(!created_again.status.labels.contains_key("retry_of"));

    // The same request id retrying another failed job is another request.
    let other = s
        .engine
        .retry(&tenant, &failed[1], Some(rid.into()))
        .await
        .unwrap();
    assert_ne!(other.status.job_id, retried.status.job_id);
    assert_eq!(
        other.status.labels.get("retry_of"),
        Some(&failed[1].to_string())
    );

    // Two failed, one created, two retries: five jobs, no more.
    let page = s
        .engine
        .list_jobs(&tenant, Default::default(), 50, None)
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 5);
    s.engine.shutdown().await;
}
