//! Store figures on SQLite and PostgreSQL, printed as a table: commands/s for
//! 1 and 16 clients (the store's path and, for comparison, the raw cqrs-es
//! framework on the same backend and commands), feed catch-up events/s,
//! projection lag under load, and the time to load a job of 10,000 events.
//!
//! `cargo bench -p loraflow-store --bench store_bench` (PostgreSQL from
//! `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; a
//! schema of its own, dropped at the end). `BENCH_SECONDS` sets each
//! throughput run's length (default 3), `BENCH_ROUNDS` how many rounds of
//! raw / raw on the store's tables / store runs (default 3): the table gives
//! the median and the range, and each round's ratio to raw, whose runs
//! follow each other and so share the machine's load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cqrs_es::CqrsFramework;
use cqrs_es::persist::PersistedEventStore;
use loraflow_core::catalogue::Catalogue;
use loraflow_core::ids::{ExecutorId, JobId, LeaseId, StepId};
use loraflow_core::job::canned::{Driver, sample_dataset, sample_spec};
use loraflow_core::job::upcast::upcasters;
use loraflow_core::job::{
    CreateJob, Heartbeat, JobCommand, JobServices, LeaseStep, StepProgress, SubmitJob, TrainingJob,
};
use loraflow_store::{FeedFilter, Metadata, Store, StoreOptions};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// sqlite-es 0.5.0's own tables (its `migrations/20221114171845_init.sql`).
const SQLITE_ES_TABLES: [&str; 2] = [
    "CREATE TABLE events (
        aggregate_type text NOT NULL,
        aggregate_id   text NOT NULL,
        sequence       integer CHECK (sequence >= 0) NOT NULL,
        event_type     text NOT NULL,
        event_version  text NOT NULL,
        payload        text NOT NULL,
        metadata       text NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence)
    ) STRICT",
    "CREATE TABLE snapshots (
        aggregate_type   text NOT NULL,
        aggregate_id     text NOT NULL,
        last_sequence    integer CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
        payload          text NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
    ) STRICT",
];

/// postgres-es 0.5.0's own tables (its `db/init.sql`).
const POSTGRES_ES_TABLES: [&str; 2] = [
    "CREATE TABLE events (
        aggregate_type text NOT NULL,
        aggregate_id   text NOT NULL,
        sequence       bigint CHECK (sequence >= 0) NOT NULL,
        event_type     text NOT NULL,
        event_version  text NOT NULL,
        payload        json NOT NULL,
        metadata       json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence)
    )",
    "CREATE TABLE snapshots (
        aggregate_type   text NOT NULL,
        aggregate_id     text NOT NULL,
        last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
        payload          json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
    )",
];

/// Heartbeats per job before a client starts a new one, so that loads stay
/// the size of a typical job.
const HEARTBEATS_PER_JOB: u64 = 50;
const LOAD_EVENTS: usize = 10_000;

fn services() -> JobServices {
    JobServices::new(Catalogue::builtin())
}

fn setup_commands(job: &JobId) -> [JobCommand; 3] {
    [
        JobCommand::Create(CreateJob {
            job_id: job.clone(),
            spec: sample_spec(),
        }),
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }),
        JobCommand::LeaseStep(LeaseStep {
            step_id: StepId::new("validate"),
            lease_id: LeaseId::new("lease-1"),
            executor_id: ExecutorId::new("gpu-0"),
            instance: None,
        }),
    ]
}

fn heartbeat(i: u64) -> JobCommand {
    JobCommand::Heartbeat(Heartbeat {
        lease_id: LeaseId::new("lease-1"),
        progress: StepProgress {
            percent: (i % 100) as f32,
            epoch: Some(1),
            step: Some(i),
            total_steps: Some(10_000),
            loss: Some(0.1),
            ..Default::default()
        },
    })
}

/// Something that runs one command against one job.
trait Target: Clone + Send + Sync + 'static {
    fn run(
        &self,
        job: &JobId,
        cmd: JobCommand,
    ) -> impl std::future::Future<Output = Result<Option<u64>>> + Send;
}

#[derive(Clone)]
struct StorePath(Store);

impl Target for StorePath {
    async fn run(&self, job: &JobId, cmd: JobCommand) -> Result<Option<u64>> {
        Ok(self.0.execute(job, cmd, Metadata::new()).await?.position)
    }
}

/// The raw cqrs-es framework on the backend's own repository, without the
/// store's metadata, hash chain, positions or retries.
struct Raw<R: cqrs_es::persist::PersistedEventRepository + 'static>(
    Arc<CqrsFramework<TrainingJob, PersistedEventStore<R, TrainingJob>>>,
);

impl<R: cqrs_es::persist::PersistedEventRepository + 'static> Clone for Raw<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<R: cqrs_es::persist::PersistedEventRepository + 'static> Target for Raw<R> {
    async fn run(&self, job: &JobId, cmd: JobCommand) -> Result<Option<u64>> {
        self.0
            .execute(job.as_str(), cmd)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(None)
    }
}

/// `clients` clients run commands for `secs`; returns commands/s.
async fn throughput<T: Target>(
    target: T,
    clients: usize,
    secs: f64,
    tag: &str,
    lag: Option<(Store, Arc<std::sync::Mutex<Vec<Duration>>>)>,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (target, stop, done, lag) = (target.clone(), stop.clone(), done.clone(), lag.clone());
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            'jobs: loop {
                let job = JobId::new(format!("{tag}-c{c}-j{n}"));
                n += 1;
                for cmd in setup_commands(&job) {
                    target.run(&job, cmd).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                for i in 0..HEARTBEATS_PER_JOB {
                    if stop.load(Ordering::Relaxed) {
                        break 'jobs;
                    }
                    let position = target.run(&job, heartbeat(i)).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    // Client 0 measures how long until the views show its write.
                    if let (0, Some((store, lags)), Some(p)) = (c, &lag, position) {
                        let t0 = Instant::now();
                        store.wait_for_timeout(p, Duration::from_secs(30)).await?;
                        lags.lock().unwrap().push(t0.elapsed());
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(count as f64 / elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Commands/s of the three paths, one value per round.
#[derive(Default)]
struct Rounds {
    raw: Vec<f64>,
    schema: Vec<f64>,
    store: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Rounds {
    /// Median, lowest and highest.
    fn spread(v: &[f64]) -> (f64, f64, f64) {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(v.to_vec()), lo, hi)
    }

    /// `path / raw` of each round (a round's runs follow each other, so they
    /// share the machine's load), in percent.
    fn ratios(&self, path: &[f64]) -> Vec<f64> {
        path.iter()
            .zip(&self.raw)
            .map(|(p, r)| 100.0 * p / r)
            .collect()
    }
}

struct Figures {
    backend: &'static str,
    one: Rounds,
    sixteen: Rounds,
    catch_up: f64,
    lag_p50: Duration,
    lag_p99: Duration,
    lag_samples: usize,
    load_10k: Duration,
}

/// `raw`: the framework on the backend's own tables; `on_schema`: the same
/// framework on tables made by the store's migrations (its extra columns,
/// indexes and triggers, without its code path), which tells the schema's
/// share of the overhead from the code's. Each round runs the three one
/// after the other, for 1 client, then for 16.
async fn measure<R>(
    backend: &'static str,
    store: Store,
    raw: Raw<R>,
    on_schema: Raw<R>,
    secs: f64,
    rounds: usize,
) -> Result<Figures>
where
    R: cqrs_es::persist::PersistedEventRepository + 'static,
{
    let mut one = Rounds::default();
    let mut sixteen = Rounds::default();
    for (clients, into) in [(1, &mut one), (16, &mut sixteen)] {
        for r in 0..rounds {
            eprintln!("{backend}: {clients} client(s), round {}/{rounds}", r + 1);
            let tag = |path: &str| format!("{path}{clients}r{r}");
            into.raw
                .push(throughput(raw.clone(), clients, secs, &tag("raw"), None).await?);
            into.schema
                .push(throughput(on_schema.clone(), clients, secs, &tag("sch"), None).await?);
            into.store
                .push(throughput(StorePath(store.clone()), clients, secs, &tag("s"), None).await?);
        }
    }

    eprintln!("{backend}: feed catch-up");
    let t0 = Instant::now();
    let (mut after, mut events) = (0, 0usize);
    loop {
        let page = store.feed().read(after, 1000, &FeedFilter::all()).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        events += page.len();
    }
    let catch_up = events as f64 / t0.elapsed().as_secs_f64();

    eprintln!("{backend}: projection lag under 16 clients");
    let shutdown = CancellationToken::new();
    let runner = store.start_projections(shutdown.clone());
    store
        .wait_for_timeout(store.feed().head().await?, Duration::from_secs(120))
        .await?;
    let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
    throughput(
        StorePath(store.clone()),
        16,
        secs,
        "lag",
        Some((store.clone(), lags.clone())),
    )
    .await?;
    shutdown.cancel();
    runner.await??;
    let mut lags = lags.lock().unwrap().clone();
    lags.sort();

    eprintln!("{backend}: load a job of {LOAD_EVENTS} events");
    let job = JobId::new("load-10k");
    let mut d = Driver::new();
    d.job_id = job.clone();
    d.create().submit();
    let lease = d.lease("validate");
    let mut i = 0;
    while d.events.len() < LOAD_EVENTS {
        i += 1;
        d.exec(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress {
                percent: 50.0,
                step: Some(i),
                loss: Some(0.1),
                ..Default::default()
            },
        }))?;
    }
    let mut at = 0u64;
    for chunk in d.events[..LOAD_EVENTS].chunks(500) {
        store
            .append_events(&job, at, chunk.to_vec(), Metadata::new())
            .await?;
        at += chunk.len() as u64;
    }
    let mut loads = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let loaded = store.load(&job).await?.context("the job loads")?;
        loads.push(t0.elapsed());
        assert_eq!(loaded.sequence, LOAD_EVENTS as u64);
    }
    loads.sort();

    Ok(Figures {
        backend,
        one,
        sixteen,
        catch_up,
        lag_p50: percentile(&lags, 0.5),
        lag_p99: percentile(&lags, 0.99),
        lag_samples: lags.len(),
        load_10k: loads[loads.len() / 2],
    })
}

fn print(figures: &[Figures]) {
    println!(
        "| figure | {} |",
        figures
            .iter()
            .map(|f| f.backend)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(figures.len()));
    let row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        println!(
            "| {name} | {} |",
            figures.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    };
    let cps = |v: &[f64]| {
        let (m, lo, hi) = Rounds::spread(v);
        format!("{m:.0} [{lo:.0}–{hi:.0}]")
    };
    let pct = |v: Vec<f64>| {
        let (m, lo, hi) = Rounds::spread(&v);
        format!("{m:.0}% [{lo:.0}–{hi:.0}%]")
    };
    for (n, many) in [("1 client", false), ("16 clients", true)] {
        fn pick(f: &Figures, many: bool) -> &Rounds {
            if many { &f.sixteen } else { &f.one }
        }
        row(&format!("raw cqrs-es, {n} (commands/s)"), &|f| {
            cps(&pick(f, many).raw)
        });
        row(&format!("raw cqrs-es on the store's tables, {n}"), &|f| {
            cps(&pick(f, many).schema)
        });
        row(&format!("store, {n} (commands/s)"), &|f| {
            cps(&pick(f, many).store)
        });
        row(&format!("store / raw, {n}"), &|f| {
            let r = pick(f, many);
            pct(r.ratios(&r.store))
        });
        row(&format!("raw on the store's tables / raw, {n}"), &|f| {
            let r = pick(f, many);
            pct(r.ratios(&r.schema))
        });
    }
    row("feed catch-up (events/s)", &|f| {
        format!("{:.0}", f.catch_up)
    });
    row("projection lag p50 / p99 under 16 clients", &|f| {
        format!(
            "{:.1} ms / {:.1} ms ({} samples)",
            ms(f.lag_p50),
            ms(f.lag_p99),
            f.lag_samples
        )
    });
    row("load a job of 10,000 events", &|f| {
        format!("{:.0} ms", ms(f.load_10k))
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pg_raw(pool: sqlx::PgPool) -> Raw<postgres_es::PostgresEventRepository> {
    let repo = postgres_es::PostgresEventRepository::new(pool);
    Raw(Arc::new(CqrsFramework::new(
        PersistedEventStore::new_event_store(repo).with_upcasters(upcasters()),
        vec![],
        services(),
    )))
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut figures = Vec::new();

    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &format!("sqlite://{}", dir.path().join("store.db").display()),
        services(),
    )
    .await?;
    // The raw framework: a file of its own, sqlite-es' pool (WAL,
    // synchronous = NORMAL, 10 connections) and sqlite-es' own tables, none
    // of the store's columns, indexes or triggers.
    let raw_url = format!("sqlite://{}", dir.path().join("raw.db").display());
    let pool = sqlite_es::default_sqlite_pool(&raw_url).await;
    for sql in SQLITE_ES_TABLES {
        sqlx::query(sql).execute(&pool).await?;
    }
    let raw = Raw(Arc::new(sqlite_es::sqlite_cqrs(pool, vec![], services())));
    let schema_url = format!("sqlite://{}", dir.path().join("schema.db").display());
    Store::open(&schema_url, services()).await?.close().await;
    let pool = sqlite_es::default_sqlite_pool(&schema_url).await;
    let on_schema = Raw(Arc::new(sqlite_es::sqlite_cqrs(pool, vec![], services())));
    figures.push(measure("SQLite", store.clone(), raw, on_schema, secs, rounds).await?);
    store.close().await;

    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgConnection::connect(&url).await {
        Err(e) => eprintln!("PostgreSQL at {url} is unreachable ({e}); its figures are left out"),
        Ok(conn) => {
            conn.close().await?;
            let schema = format!("bench_{:08x}", rand::random::<u32>());
            let raw_schema = format!("{schema}_raw");
            let store_schema = format!("{schema}_tables");
            let open = |schema: String| {
                let url = url.clone();
                async move {
                    Store::open_with(
                        &url,
                        services(),
                        StoreOptions {
                            postgres_schema: Some(schema),
                            ..Default::default()
                        },
                    )
                    .await
                }
            };
            let store = open(schema.clone()).await?;
            // The raw framework: a schema of its own with postgres-es' own
            // tables, none of the store's columns, indexes or triggers.
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(&format!("CREATE SCHEMA {raw_schema}"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(24)
                .connect_with(
                    url.parse::<sqlx::postgres::PgConnectOptions>()?
                        .options([("search_path", raw_schema.as_str())]),
                )
                .await?;
            for sql in POSTGRES_ES_TABLES {
                sqlx::query(sql).execute(&pool).await?;
            }
            let raw = pg_raw(pool);
            open(store_schema.clone()).await?.close().await;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(24)
                .connect_with(
                    url.parse::<sqlx::postgres::PgConnectOptions>()?
                        .options([("search_path", store_schema.as_str())]),
                )
                .await?;
            let on_schema = pg_raw(pool);
            let result = measure("PostgreSQL", store.clone(), raw, on_schema, secs, rounds).await;
            store.close().await;
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            for s in [&schema, &raw_schema, &store_schema] {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                    .execute(&mut conn)
                    .await?;
            }
            figures.push(result?);
        }
    }
    print(&figures);
    Ok(())
}
