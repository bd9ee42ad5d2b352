//! Opening a fresh store per test: memory, a SQLite file in a temporary
//! folder, or a PostgreSQL schema of its own (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Without PostgreSQL a test
//! prints a notice and passes, except under `CI=true`, where it fails.

use std::sync::Arc;
use std::time::Duration;

use loraflow_core::catalogue::Catalogue;
use loraflow_core::clock::ManualClock;
use loraflow_core::ids::JobId;
use loraflow_core::job::canned::Driver;
use loraflow_core::job::{JobEvent, JobServices};
use serde_json::Value;

use crate::backend::{Backend, postgres as pg_backend};
use crate::event::Position;
use crate::{Metadata, Store, StoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

pub(crate) struct TestStore {
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub url: String,
    pub kind: Kind,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub(crate) fn test_options(schema: Option<String>) -> StoreOptions {
    StoreOptions {
        poll_interval: Duration::from_millis(20),
        postgres_schema: schema,
        ..StoreOptions::default()
    }
}

/// Whether PostgreSQL answers; under `CI=true` it must.
async fn postgres_reachable(url: &str) -> bool {
    use sqlx::Connection;
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await,
        Ok(Ok(_))
    );
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "PostgreSQL at {url} is unreachable, and CI=true requires the PostgreSQL tests to run"
            );
        }
        eprintln!("notice: PostgreSQL at {url} is unreachable; skipping this PostgreSQL test");
    }
    ok
}

pub(crate) fn services(clock: Arc<ManualClock>) -> JobServices {
    JobServices::new(Catalogue::builtin()).with_clock(clock)
}

fn unique_schema() -> String {
    format!("t_{:016x}", rand::random::<u64>())
}

impl TestStore {
    /// A fresh, empty store of `kind`; `None` when PostgreSQL is unreachable
    /// outside CI.
    pub(crate) async fn open(kind: Kind) -> Option<Self> {
        let clock = Arc::new(ManualClock::at_epoch());
        let (url, schema, dir) = match kind {
            Kind::Memory => ("memory:".to_owned(), None, None),
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}",
                    dir.path().join("nested/loraflow.db").display()
                );
                (url, None, Some(dir))
            }
            Kind::Postgres => {
                let url = database_url();
                if !postgres_reachable(&url).await {
                    return None;
                }
                (url, Some(unique_schema()), None)
            }
        };
        let store = Store::open_with(&url, services(clock.clone()), test_options(schema.clone()))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        Some(Self {
            store,
            clock,
            url,
            kind,
            schema,
            _dir: dir,
        })
    }

    /// Another store on the same database (a second process, or a restart).
    pub(crate) async fn reopen(&self) -> Store {
        Store::open_with(
            &self.url,
            services(self.clock.clone()),
            test_options(self.schema.clone()),
        )
        .await
        .expect("reopen")
    }

    /// The PostgreSQL schema this store lives in.
    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Drop the PostgreSQL schema.
    pub(crate) async fn cleanup(self) {
        self.store.close().await;
        if let Some(schema) = &self.schema {
            pg_backend::drop_schema(&self.url, schema)
                .await
                .expect("drop schema");
        }
    }

    /// Overwrite the stored payload of the event at `position` (an attacker
    /// with database access).
    pub(crate) async fn tamper(&self, position: Position, payload: Value) {
        match &self.store.shared().backend {
            Backend::Memory(log, _) => log.tamper(position, payload),
            Backend::Sqlite(pool) => {
                sqlx::query("UPDATE events SET payload = ? WHERE global_position = ?")
                    .bind(payload.to_string())
                    .bind(position as i64)
                    .execute(pool)
                    .await
                    .expect("tamper");
            }
            Backend::Postgres(pool) => {
                sqlx::query("UPDATE events SET payload = $1 WHERE global_position = $2")
                    .bind(payload)
                    .bind(position as i64)
                    .execute(pool)
                    .await
                    .expect("tamper");
            }
        }
    }
}

pub(crate) fn meta() -> Metadata {
    Metadata::from([("request_id".to_owned(), "req-1".to_owned())])
}

/// A driver for job `id`, on the test store's clock.
pub(crate) fn driver(id: &str) -> Driver {
    let mut d = Driver::new();
    d.job_id = JobId::new(id);
    d
}

/// A valid history of `n` events or more for job `id`: created, submitted,
/// validate leased, then heartbeats.
pub(crate) fn long_history(id: &str, n: usize) -> Vec<JobEvent> {
    use loraflow_core::job::{Heartbeat, JobCommand, StepProgress};
    let mut d = driver(id);
    d.create().submit();
    let lease = d.lease("validate");
    let mut i = 0u64;
    while d.events.len() < n {
        i += 1;
        d.exec(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress {
                percent: (i % 100) as f32,
                step: Some(i),
                ..Default::default()
            },
        }))
        .expect("heartbeat");
    }
    d.events
}

/// Declare async test functions `fn(&TestStore)` once; run them on every backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::tests::support::TestStore::open($crate::tests::support::Kind::Memory).await.unwrap();
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
        $crate::tests::support::on_databases!($($name),*);
    };
}
pub(crate) use on_every_backend;

/// As [`on_every_backend`], on the two databases only (what needs SQL).
macro_rules! on_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::tests::support::TestStore::open($crate::tests::support::Kind::Sqlite).await.unwrap();
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = $crate::tests::support::TestStore::open($crate::tests::support::Kind::Postgres).await else {
                        return;
                    };
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
    };
}
pub(crate) use on_databases;

/// Run raw statements on a database store, in order: `sqlite`'s on
/// SQLite, `postgres`'s on PostgreSQL (to make a store look as an earlier
/// release left it, say).
pub(crate) async fn run_sql(store: &Store, sqlite: &[&str], postgres: &[&str]) {
    match &store.shared().backend {
        Backend::Sqlite(pool) => {
            for sql in sqlite {
                sqlx::query(sql).execute(pool).await.expect(sql);
            }
        }
        Backend::Postgres(pool) => {
            for sql in postgres {
                sqlx::query(sql).execute(pool).await.expect(sql);
            }
        }
        Backend::Memory(..) => unreachable!("a database store"),
    }
}

/// Wait until the feed shows every event committed so far (see
/// [`readable`]).
pub(crate) async fn all_readable(store: &Store) {
    let written = store.shared().backend.written().await.expect("written");
    readable(store, written).await;
}

/// Wait until the feed can read `position`. On PostgreSQL a committed event
/// stays unreadable while an older transaction (of any test sharing the
/// cluster) is still open.
pub(crate) async fn readable(store: &Store, position: Position) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.feed().head().await.expect("head") < position {
        assert!(
            tokio::time::Instant::now() < deadline,
            "position {position} never became readable"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
