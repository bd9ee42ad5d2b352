//! The anchor the throughput aims are set against, measured in the same run
//! on the same PostgreSQL: apalis-postgres 1.0, a plain job queue (one row
//! per job, fetched in batches of 10 and acknowledged), its worker woken by
//! `LISTEN/NOTIFY`, 16 concurrent handlers that do nothing.
//!
//! - **drain**: `jobs` jobs are queued with no worker running; then the
//!   worker starts, and the time until every handler has run gives jobs/s
//!   (the same shape as the bench's burst). The jobs are then read back as
//!   `Done` from the table, so the figure is of jobs acknowledged, not
//!   merely handed out.
//! - **queueing**: the drain's jobs are queued one by one by one client
//!   (each its own transaction), timed: jobs/s.
//! - **queueing, 16 clients**: as many jobs queued by 16 concurrent
//!   clients (one by one each, sharing apalis' pool), on a queue of their
//!   own that no worker reads: jobs/s, beside the bench's `create_job`.
//! - **queued while draining**: with the worker running and idle, as many
//!   jobs again are queued one by one; from the first push to the last
//!   handler gives jobs/s. The worker keeps up, so this is the queueing
//!   rate, not the drain: a drain measured this way is bounded by one
//!   client's commits (each a WAL flush).
//! - **pick-up**: with the worker idle, jobs are queued one by one at
//!   `rate` jobs/s for `seconds`; each carries the instant it was queued,
//!   and its handler takes the difference (queued → handler started).
//!
//! Built only with the `anchor` feature:
//! `cargo bench --bench scheduler_bench --features anchor`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use sqlx::Connection;
use tokio::sync::Notify;

/// What the handlers saw.
struct Seen {
    handled: AtomicUsize,
    /// The drain is over when `handled` reaches it.
    target: AtomicUsize,
    drained: Notify,
    /// Queued → handler started, in ms, for jobs that carry their instant.
    pickups: std::sync::Mutex<Vec<f64>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A job's argument: the instant it was queued (µs since the epoch), or 0
/// for the drain's jobs.
async fn handle(queued_us: i64, seen: Data<Arc<Seen>>) -> Result<(), BoxDynError> {
    if queued_us > 0 {
        let ms = (now_us() - queued_us) as f64 / 1e3;
        seen.pickups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ms);
    }
    if seen.handled.fetch_add(1, Ordering::SeqCst) + 1 == seen.target.load(Ordering::SeqCst) {
        seen.drained.notify_one();
    }
    Ok(())
}

/// Jobs of `queue` marked `Done` in apalis' table.
async fn done(c: &mut sqlx::PgConnection, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
        .bind(queue)
        .fetch_one(c)
        .await
        .expect("count apalis' done jobs")
}

/// Drain and pick-up, as the module says; the lines to print.
pub async fn run(url: &str, jobs: usize, rate: u64, seconds: u64) -> Vec<String> {
    let mut c = sqlx::PgConnection::connect(url).await.expect("PostgreSQL");
    // apalis keeps its tables in a schema of its own: made here, it goes at
    // the end; found here, only this run's rows go.
    let had_schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'apalis')")
            .fetch_one(&mut c)
            .await
            .expect("look for apalis' schema");
    let pool = PgPool::connect(url).await.expect("PostgreSQL for apalis");
    PostgresStorage::setup(&pool)
        .await
        .expect("apalis' schema (its migrations)");
    let queue = format!("loraflow-bench-anchor-{}", std::process::id());
    let config = Config::default().queue(&queue);
    let mut sink = PostgresStorage::new(&pool).with_config(config.clone());
    let queueing = Instant::now();
    for _ in 0..jobs {
        sink.push(0i64).await.expect("queue an apalis job");
    }
    let queueing = queueing.elapsed().as_secs_f64();
    let clients = 16;
    let unread = format!("{queue}-unread");
    let shared = PostgresStorage::new(&pool).with_config(Config::default().queue(&unread));
    let parallel = Instant::now();
    let pushers: Vec<_> = (0..clients)
        .map(|i| {
            let mut sink = shared.clone();
            let n = jobs / clients + usize::from(i < jobs % clients);
            tokio::spawn(async move {
                for _ in 0..n {
                    sink.push(0i64).await.expect("queue an apalis job");
                }
            })
        })
        .collect();
    for pusher in pushers {
        pusher.await.expect("an apalis client");
    }
    let parallel = parallel.elapsed().as_secs_f64();
    let seen = Arc::new(Seen {
        handled: AtomicUsize::new(0),
        target: AtomicUsize::new(jobs),
        drained: Notify::new(),
        pickups: std::sync::Mutex::new(Vec::new()),
    });
    let worker = WorkerBuilder::new(format!("{queue}-worker"))
        .backend(
            PostgresStorage::new(&pool)
                .with_config(config)
                .with_pubsub(),
        )
        .concurrency(16)
        .parallelize(tokio::spawn)
        .data(seen.clone())
        .build(handle);
    let mut lines = vec![
        format!(
            "queueing: {jobs} jobs queued one by one by one client in {queueing:.2} s = {:.0} jobs/s",
            jobs as f64 / queueing
        ),
        format!(
            "queueing, {clients} clients: {jobs} jobs in {parallel:.2} s = {:.0} jobs/s",
            jobs as f64 / parallel
        ),
    ];
    // Taken before the worker runs: it starts with the select below.
    let writes = super::pg_writes().await;
    let cpu = super::cpu_seconds();
    let t = Instant::now();
    let measure = async {
        seen.drained.notified().await;
        let took = t.elapsed().as_secs_f64();
        let cpu = super::cpu_per(cpu, jobs);
        let writes = super::pg_writes_per(writes, jobs).await;
        // Acknowledgements may trail the handlers by a moment.
        let mut acknowledged = done(&mut c, &queue).await;
        let until = Instant::now() + Duration::from_secs(5);
        while (acknowledged as usize) < jobs && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
            acknowledged = done(&mut c, &queue).await;
        }
        lines.push(format!(
            "drain: {jobs} jobs queued beforehand, handled in {took:.2} s = {:.0} jobs/s \
             ({acknowledged} acknowledged {:.2} s after the start); per job {cpu}{writes}",
            jobs as f64 / took,
            t.elapsed().as_secs_f64()
        ));
        // As many again, queued one by one while the worker runs.
        seen.target.store(2 * jobs, Ordering::SeqCst);
        let t = Instant::now();
        for _ in 0..jobs {
            sink.push(0i64).await.expect("queue an apalis job");
        }
        let queued = t.elapsed().as_secs_f64();
        let _ = tokio::time::timeout(Duration::from_secs(30), seen.drained.notified()).await;
        let handled = seen.handled.load(Ordering::SeqCst) - jobs;
        let took = t.elapsed().as_secs_f64();
        lines.push(format!(
            "queued while draining: {jobs} jobs queued one by one ({queued:.2} s) with the worker \
             running, {handled} handled {took:.2} s after the first = {:.0} jobs/s",
            handled as f64 / took
        ));
        let n = (rate * seconds) as usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        for _ in 0..n {
            tick.tick().await;
            sink.push(now_us()).await.expect("queue an apalis job");
        }
        let until = Instant::now() + Duration::from_secs(5);
        while seen.handled.load(Ordering::SeqCst) < 2 * jobs + n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pickups = seen
            .pickups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        lines.push(format!("pick-up at {rate} jobs/s:"));
        lines.push(super::describe("  queued -> handler started", pickups));
    };
    tokio::select! {
        ended = worker.run() => panic!("the apalis worker ended: {ended:?}"),
        () = measure => {}
    }
    // The worker is gone; a statement of its still on the wire would hold
    // a lock for a moment at most.
    sqlx::query("SET lock_timeout = '5s'")
        .execute(&mut c)
        .await
        .expect("set a lock timeout");
    let cleanup: &[&str] = if had_schema {
        &[
            "DELETE FROM apalis.jobs WHERE job_type IN ($1, $1 || '-unread')",
            "DELETE FROM apalis.workers WHERE worker_type = $1",
        ]
    } else {
        &["DROP SCHEMA apalis CASCADE"]
    };
    for statement in cleanup {
        let q = sqlx::query(statement);
        let q = if statement.contains("$1") {
            q.bind(&queue)
        } else {
            q
        };
        if let Err(e) = q.execute(&mut c).await {
            lines.push(format!("(left in the database: {statement} failed: {e})"));
        }
    }
    lines
}
