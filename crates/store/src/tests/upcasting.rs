//! A `JobCreated` of schema 1.0, stored as raw JSON the way an old release
//! wrote it, still loads, lists and accepts commands on SQLite, PostgreSQL
//! and memory.

use cqrs_es::persist::SerializedEvent;
use loraflow_core::catalogue::Engine;
use loraflow_core::ids::JobId;
use loraflow_core::job::{CancelJob, JobCommand, JobEvent, JobState};
use serde_json::json;

use super::support::{TestStore, meta, on_every_backend};
use crate::backend::{AGGREGATE, Backend, postgres as pg_backend, sqlite as sqlite_backend};
use crate::event::RawEvent;
use crate::verify::ChainFault;
use crate::{Error, FeedFilter};

fn old_job_created() -> RawEvent {
    RawEvent {
        position: 0,
        job_id: JobId::new("job-legacy"),
        sequence: 1,
        event_type: "JobCreated".into(),
        event_version: "1.0".into(),
        payload: json!({
            "JobCreated": {
                "job_id": "job-legacy",
                "tenant": "acme",
                "model": "sd15",
                "engine": "kohya",
                "params": { "epochs": 4, "learning_rate": 0.0002 },
                "dataset_uri": "s3://bucket/ds.zip",
                "created_at": "2025-03-01T10:00:00Z"
            }
        }),
        metadata: json!({}),
    }
}

async fn an_old_event_stored_as_raw_json_is_upcast(t: &TestStore) {
    let raw = old_job_created();
    match &t.store.shared().backend {
        Backend::Sqlite(pool) => sqlite_backend::insert_raw(pool, &raw).await.unwrap(),
        Backend::Postgres(pool) => pg_backend::insert_raw(pool, &raw).await.unwrap(),
        Backend::Memory(log, _) => log
            .insert_raw(
                AGGREGATE,
                SerializedEvent::new(
                    raw.job_id.to_string(),
                    1,
                    AGGREGATE.into(),
                    raw.event_type.clone(),
                    raw.event_version.clone(),
                    raw.payload.clone(),
                    raw.metadata.clone(),
                ),
            )
            .unwrap(),
    }
    let job = JobId::new("job-legacy");
    // An old release wrote it before this store began signing.
    let planted = t.store.raw_history(&job).await.unwrap()[0].position;
    t.store.set_signing_began(planted);
    let loaded = t.store.load(&job).await.unwrap().expect("loads");
    assert_eq!(loaded.job.state(), Some(JobState::Pending));
    assert_eq!(loaded.job.spec().unwrap().engine, Engine::Kohya);
    assert_eq!(loaded.job.spec().unwrap().dataset.uri, "s3://bucket/ds.zip");

    let history = t.store.history(&job).await.unwrap();
    assert_eq!(
        history[0].event_version, "1.0",
        "the stored version is reported"
    );
    let JobEvent::JobCreated(created) = &history[0].payload else {
        panic!("{:?}", history[0].payload)
    };
    assert_eq!(created.spec.naming.subject, "job-legacy");
    assert_eq!(
        t.store.raw_history(&job).await.unwrap()[0].payload,
        raw.payload
    );

    // The feed and the views read it too.
    let position = t.store.raw_history(&job).await.unwrap()[0].position;
    super::support::readable(&t.store, position).await;
    let feed = t
        .store
        .feed()
        .read(0, 10, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(feed.len(), 1);
    t.store.catch_up_views().await.unwrap();
    let status = t
        .store
        .views()
        .job_status(&job)
        .await
        .unwrap()
        .expect("a status");
    assert_eq!(status.engine, Engine::Kohya);

    // New events chain on from it; the legacy event itself carries no hash.
    let c = t
        .store
        .execute(
            &job,
            JobCommand::Cancel(CancelJob {
                reason: "migrated".into(),
                cancelled_by: "ops".into(),
            }),
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(c.sequence, 2);
    let history = t.store.history(&job).await.unwrap();
    assert_eq!(history[1].tenant().unwrap().as_str(), "acme");
    let err = t.store.verify_job(&job).await.unwrap_err();
    let Error::TamperedLog(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!((e.sequence, e.fault), (1, ChainFault::Unsigned));
}

on_every_backend!(an_old_event_stored_as_raw_json_is_upcast);
