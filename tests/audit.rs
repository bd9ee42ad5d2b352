//! The signed audit log end to end, on SQLite and PostgreSQL: an intact
//! history verifies; an event edited by hand in the database is reported at
//! its position, by the library and by `loraflow replay` (exit code 4); the
//! running engine refuses to approve a job whose `ReviewRequested` was
//! edited. The CLI's `audit` commands are in `tests/audit_cli.rs`.

use crate::common;
use crate::on_both_backends;

use common::server::{Backend, ServerSetup, TestServer, database_url};
use common::*;
use loraflow::audit::audit_job;
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::JobState;
use loraflow::store::StoreOptions;
use loraflow::{Engine, NewJob};

async fn cancelled_job(engine: &Engine, dataset_uri: &str) -> JobId {
    let tenant = TenantId::new("acme");
    let id = engine
        .create_job(
            &tenant,
            NewJob {
                spec: spec(dataset_uri),
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id;
    engine
        .cancel(&tenant, &id, "audit me", "alice", None)
        .await
        .unwrap();
    id
}

/// Rewrite the reason inside the stored `JobCancelled` payload, as someone
/// with database access might.
async fn tamper(backend: Backend, dir: &std::path::Path, options: &StoreOptions, job: &JobId) {
    use sqlx::Connection;
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("loraflow.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let n = sqlx::query(
                "UPDATE events SET payload = json_set(payload, '$.JobCancelled.reason', 'nothing to see') \
                 WHERE aggregate_id = ? AND event_type = 'JobCancelled'",
            )
            .bind(job.as_str())
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
            assert_eq!(n, 1);
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            let schema = options.postgres_schema.as_ref().unwrap();
            let n = sqlx::query(&format!(
                "UPDATE {schema}.events SET payload = jsonb_set(payload::jsonb, '{{JobCancelled,reason}}', '\"nothing to see\"')::json \
                 WHERE aggregate_id = $1 AND event_type = 'JobCancelled'"
            ))
            .bind(job.as_str())
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
            assert_eq!(n, 1);
        }
    }
}

on_both_backends! {
    async fn an_edited_event_is_reported_at_its_position(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let job = cancelled_job(&s.engine, &s.dataset_uri).await;

        let audit = audit_job(s.engine.store(), &job).await.unwrap().unwrap();
        assert!(audit.is_intact(), "{:?}", audit.report);
        let states: Vec<_> = audit.events.iter().map(|e| e.state_after).collect();
        assert_eq!(states.first().copied().flatten(), Some(JobState::Pending));
        assert_eq!(states.last().copied().flatten(), Some(JobState::Failed));
        let cancelled_at = audit.events.last().unwrap().position;

        tamper(backend, s.tmp.path(), &s.store_options, &job).await;
        let audit = audit_job(s.engine.store(), &job).await.unwrap().unwrap();
        assert!(!audit.is_intact());
        assert_eq!(audit.first_tampered(), Some(cancelled_at));
        assert_eq!(audit.chain_problem().unwrap().fault, loraflow::store::ChainFault::Edited);
        // The tampered payload still reads; the replay shows what it now says.
        assert_eq!(audit.job.failure().unwrap().message, "nothing to see");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_command_exports_json_lines_and_exits_4_on_tampering() {
    let s = TestServer::start(Backend::Sqlite, ServerSetup::default())
        .await
        .unwrap();
    let job = cancelled_job(&s.engine, &s.dataset_uri).await;
    let store = format!("sqlite://{}", s.tmp.path().join("loraflow.db").display());
    let jsonl = s.tmp.path().join("history.jsonl");
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loraflow"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let ok = run(vec![
        "replay".into(),
        job.to_string(),
        "--store".into(),
        store.clone(),
        "--jsonl".into(),
        jsonl.display().to_string(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("JobCancelled") && stdout.contains("-> Failed"),
        "{stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["event_type"], "JobCancelled");
    assert_eq!(lines[3]["state_after"], "Failed");
    assert!(lines[3]["metadata"]["hash"].is_string());
    assert!(lines[3]["metadata"]["sig"].is_string());
    assert_eq!(lines[3]["metadata"]["chain"], "2");

    tamper(Backend::Sqlite, s.tmp.path(), &s.store_options, &job).await;
    let bad = run(vec![
        "replay".into(),
        job.to_string(),
        "--store".into(),
        store,
    ]);
    assert_eq!(bad.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!("edited at position {}", lines[3]["position"])),
        "{stderr}"
    );
    s.stop().await;
}

/// Edit one field inside the stored `ReviewRequested` of `job`.
async fn edit_review(backend: Backend, dir: &std::path::Path, options: &StoreOptions, job: &JobId) {
    use sqlx::Connection;
    let n = match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("loraflow.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(
                "UPDATE events SET payload = json_set(payload, '$.ReviewRequested.epochs[0].loss', 0.0001) \
                 WHERE aggregate_id = ? AND event_type = 'ReviewRequested'",
            )
            .bind(job.as_str())
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected()
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            let schema = options.postgres_schema.as_ref().unwrap();
            sqlx::query(&format!(
                "UPDATE {schema}.events SET payload = jsonb_set(payload::jsonb, '{{ReviewRequested,epochs,0,loss}}', '0.0001')::json \
                 WHERE aggregate_id = $1 AND event_type = 'ReviewRequested'"
            ))
            .bind(job.as_str())
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected()
        }
    };
    assert_eq!(n, 1);
}

on_both_backends! {
    async fn a_job_whose_review_was_edited_is_never_approved(backend: Backend) {
        use loraflow::core::job::JobEvent;
        use loraflow_proto::pb::v1 as pb;
        let setup = ServerSetup { executors: true, ..ServerSetup::default() };
        let Some(s) = TestServer::start(backend, setup).await else { return };
        let tenant = TenantId::new("acme");
        let job = create_job(&s.engine, spec(&s.dataset_uri)).await;
        wait_event(&s.engine, &tenant, &job, |e| matches!(e, JobEvent::ReviewRequested(_))).await;
        let (before, _) = s.engine.store().job_log(&job).await.unwrap();
        let review = before.iter().find(|e| e.event_type == "ReviewRequested").unwrap().clone();

        edit_review(backend, s.tmp.path(), &s.store_options, &job).await;

        let mut c = s.client(Some("t-acme")).await;
        let err = c
            .approve_job(pb::ApproveJobRequest { job_id: job.to_string(), epoch: 1, etag: String::new(), step: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss, "{}", err.message());
        assert!(err.message().contains("edited"), "{}", err.message());
        assert!(err.message().contains(&format!("position {}", review.position)), "{}", err.message());

        // Nothing was written: no approval, no publication.
        let (after, _) = s.engine.store().job_log(&job).await.unwrap();
        assert_eq!(after.len(), before.len());
        assert!(after.iter().all(|e| e.event_type != "JobApproved" && e.event_type != "JobPublished"));
        // The audit names the event.
        let audit = audit_job(s.engine.store(), &job).await.unwrap().unwrap();
        let p = audit.chain_problem().unwrap();
        assert_eq!((p.fault, p.position), (loraflow::store::ChainFault::Edited, review.position));
        s.stop().await;
    }
}
