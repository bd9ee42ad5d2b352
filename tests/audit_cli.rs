//! `loraflow audit` and `loraflow replay` through the binary, on SQLite and
//! PostgreSQL: a missing store is exit 3 and is not created; an intact log
//! verifies (one job, the whole store, an export checked offline with the
//! public key alone); a cut tail, an edited export and a wrong key are
//! exit 4 with the kind and position; `keygen` makes a key the engine signs
//! with.

use crate::common;
use crate::on_both_backends;

use std::path::Path;
use std::process::Output;

use common::server::{Backend, ServerSetup, TestServer, database_url};
use common::*;
use loraflow::core::ids::{JobId, TenantId};
use loraflow::store::AuditKey;
use loraflow::{Engine, NewJob};

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loraflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LORAFLOW_STORE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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

/// The store URL the CLI is given: the SQLite file, or PostgreSQL with the
/// test's schema as its search path.
fn cli_store(backend: Backend, s: &TestServer) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", s.tmp.path().join("loraflow.db").display()),
        Backend::Postgres => format!(
            "{}?options=-c%20search_path%3D{}",
            database_url(),
            s.store_options.postgres_schema.as_ref().unwrap()
        ),
    }
}

/// Delete the job's last event, as someone with database access might.
async fn cut_tail(backend: Backend, s: &TestServer, job: &JobId) {
    use sqlx::Connection;
    let q = "DELETE FROM events WHERE aggregate_id = $1 AND sequence = (SELECT MAX(sequence) FROM events WHERE aggregate_id = $1)";
    let n = match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", s.tmp.path().join("loraflow.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(&q.replace("$1", "?1"))
                .bind(job.as_str())
                .execute(&mut c)
                .await
                .unwrap()
                .rows_affected()
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            let schema = s.store_options.postgres_schema.as_ref().unwrap();
            sqlx::query(&q.replace("events", &format!("{schema}.events")))
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
    async fn audit_verify_and_export_find_tampering_with_exit_4(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let job = cancelled_job(&s.engine, &s.dataset_uri).await;
        let store = cli_store(backend, &s);
        let dir = s.tmp.path();
        let public = dir.join("audit.pub");
        std::fs::write(&public, s.engine.store().audit_key().public_key().to_pem()).unwrap();
        let public = public.display().to_string();
        let export = dir.join("export").display().to_string();

        let ok = cli(&["audit", "verify", job.as_str(), "--store", &store, "--public-key", &public]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let ok = cli(&["audit", "verify", "--all", "--store", &store, "--public-key", &public]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let ok = cli(&["replay", job.as_str(), "--store", &store, "--public-key", &public]);
        assert!(ok.status.success(), "{}", stderr(&ok));

        // An export verifies offline with the public key alone.
        let exported = cli(&["audit", "export", "--out", &export, "--store", &store, "--public-key", &public]);
        assert!(exported.status.success(), "{}", stderr(&exported));
        for f in ["events.jsonl", "heads.jsonl", "checkpoints.jsonl", "manifest.json"] {
            assert!(Path::new(&export).join(f).is_file(), "{f}");
        }
        let ok = cli(&["audit", "verify", "--export", &export, "--public-key", &public]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        // Another key: every signature is refused.
        let stranger = dir.join("stranger.pub");
        std::fs::write(&stranger, AuditKey::generate().public_key().to_pem()).unwrap();
        let bad = cli(&["audit", "verify", "--export", &export, "--public-key", &stranger.display().to_string()]);
        assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
        assert!(stdout(&bad).contains("bad signature"), "{}", stdout(&bad));

        // An edited line of the export.
        let events = Path::new(&export).join("events.jsonl");
        let text = std::fs::read_to_string(&events).unwrap();
        std::fs::write(&events, text.replacen("audit me", "nothing to see", 1)).unwrap();
        let bad = cli(&["audit", "verify", "--export", &export, "--public-key", &public]);
        assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
        assert!(stdout(&bad).contains(&format!("job {job}: edited at position")), "{}", stdout(&bad));

        // A cut tail in the store.
        let (events, _) = s.engine.store().job_log(&job).await.unwrap();
        cut_tail(backend, &s, &job).await;
        let before_last = events[events.len() - 2].position;
        for args in [
            vec!["audit", "verify", job.as_str(), "--store", &store, "--public-key", &public],
            vec!["audit", "verify", "--all", "--store", &store, "--public-key", &public],
        ] {
            let bad = cli(&args);
            assert_eq!(bad.status.code(), Some(4), "{args:?}: {}", stderr(&bad));
            assert!(
                stdout(&bad).contains(&format!("truncated at position {before_last}")),
                "{args:?}: {}",
                stdout(&bad)
            );
        }
        let bad = cli(&["replay", job.as_str(), "--store", &store, "--public-key", &public]);
        assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
        assert!(stderr(&bad).contains("truncated"), "{}", stderr(&bad));
        s.stop().await;
    }
}

#[test]
fn a_missing_store_is_exit_3_and_is_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let nope = tmp.path().join("nope.db");
    let url = format!("sqlite://{}", nope.display());
    for args in [
        vec!["replay", "some-job", "--store", &url],
        vec!["audit", "verify", "some-job", "--store", &url],
        vec!["audit", "verify", "--all", "--store", &url],
        vec!["audit", "export", "--out", "x", "--store", &url],
    ] {
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
        assert!(!nope.exists(), "{args:?} created the store");
        assert!(!tmp.path().join("nope.db.audit-key").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_makes_a_key_the_engine_signs_with() {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("audit.key");
    let o = cli(&["audit", "keygen", "--out", &key_file.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("-----BEGIN PUBLIC KEY-----"),
        "{}",
        stdout(&o)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = cli(&["audit", "keygen", "--out", &key_file.display().to_string()]);
    assert_eq!(again.status.code(), Some(1), "a key is never overwritten");

    // The engine signs with the configured key.
    let config = tmp.path().join("loraflow.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\nsigning_key = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let config = loraflow::config::Config::load(&config).unwrap();
    let engine = Engine::builder()
        .config(&config)
        .store(format!("sqlite://{}", tmp.path().join("lf.db").display()))
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .build()
        .await
        .unwrap();
    let key = AuditKey::load(&key_file).unwrap();
    assert_eq!(engine.store().audit_key().key_id(), key.key_id());
    assert!(
        !tmp.path().join("lf.db.audit-key").exists(),
        "no key file is made when a key is configured"
    );
    engine.shutdown().await;

    // A bad key path names the field.
    let bad = loraflow::config::Config::from_toml(
        "[audit]\nsigning_key = \"/no/such/key\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let err = Engine::builder()
        .config(&bad)
        .store("memory:")
        .artifacts(tmp.path().join("a2").display().to_string())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("audit.signing_key"), "{err}");
}
