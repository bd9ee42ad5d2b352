//! Scheduler figures over loopback gRPC, on SQLite and PostgreSQL: three-step
//! jobs (`s1 → s2 → s3 → review`) run by `noop` workers, so what is measured
//! is the engine: every lease and completion is an event committed to the
//! store and read back through the feed.
//!
//! - **burst**: `BENCH_JOBS` jobs (default 1,000) are queued with no worker
//!   connected; then 4 workers of 4 slots each connect, and the time until
//!   the last job reaches review gives steps/s.
//! - **paced**: with the workers idle, jobs arrive at each rate of
//!   `BENCH_RATES` jobs/s (default `3,30`: 9 and 90 steps/s; empty for
//!   none) for `BENCH_PACED_SECONDS` (default 10). Per step, ready → leased is
//!   `StepQueued.queued_at` → `StepLeased.leased_at` (both taken by the
//!   engine's clock as it decides). Per job: the three steps,
//!   `JobSubmitted.submitted_at` → `ReviewRequested.requested_at`; and end to
//!   end, from the `create_job` call (which returns once the views show the
//!   job) to the moment the feed delivers its `ReviewRequested` here. The
//!   slowest job's three steps are named with its place and time, to find
//!   it in PostgreSQL's log (`log_min_duration_statement`).
//!
//! - **create_job**: the burst's jobs are queued by `BENCH_CLIENTS` (default
//!   16) concurrent callers of `Engine::create_job` (which returns once the
//!   views show the job): jobs/s.
//!   With `BENCH_TENANT_MODELS=N` (default 0), the store first holds N
//!   base models registered by other tenants (50 each, records as
//!   registration writes them): what another tenant's registrations cost
//!   a `create_job`.
//! - **CPU**: beside `create_job` and the burst, the CPU time (user and
//!   system, from `/proc`) per job and per step, of the bench's process
//!   (engine, gRPC, workers) and of PostgreSQL's processes (all of them: on
//!   a shared server another client's work counts too; on SQLite this is
//!   whatever else the cluster does). Wall-clock rates move with the load of
//!   a shared machine; CPU per operation much less.
//!   Both backends: the commits per write transaction of the engine's
//!   store (its group commit; the views' and the outbox's writes aside).
//!   On PostgreSQL also the write transactions (each a WAL flush at its
//!   commit) and the WAL bytes per job and per step, cluster-wide, from the
//!   transaction id counter and the WAL position; and how the store's own
//!   sessions reach the server (TCP or a Unix socket, TLS or not), which
//!   the anchor's URL then follows.
//! - **restart** (`--history N`, or `BENCH_HISTORY=N`): the store is filled
//!   with finished jobs (each a whole published history, about 25 events,
//!   chained and signed as any commit), until it holds `N` events; one job is
//!   queued; the server is stopped and a new one started on the same store.
//!   Figures: the fill rate, the time from the start of the new server to
//!   the queued step's lease by a worker that connects at once, and the
//!   process' resident memory before and after the restart.
//!
//! `cargo bench --bench scheduler_bench` (a release build); with the restart:
//! `cargo bench --bench scheduler_bench -- --history 1000000`. With
//! `--features anchor`, the PostgreSQL figures are followed by apalis-postgres'
//! queueing, drain and pick-up on the same server (`benches/anchor/apalis.rs`),
//! the plain job queue the aims are set against.
//! `BENCH_BACKENDS` picks the backends (default `sqlite,postgres`).
//! `BENCH_BATCH=0` has the workers poll one step per slot (`PollStep`, as
//! before `PollSteps`) instead of one poll for all their free slots. PostgreSQL
//! from `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in a
//! schema of its own, dropped at the end; skipped with a notice if it is
//! unreachable.

#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(feature = "anchor")]
#[path = "anchor/apalis.rs"]
mod anchor;

/// The `loraflow` binary's allocator, so that the engine is measured as it
/// runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::noop::{NOOP, Noop, quick_retries, spec_with, three_steps};
use common::server::{Backend, Deployment, ServerSetup, TestServer};
use common::worker::{bare_worker, bare_worker_polling};
use futures::StreamExt;
use loraflow::config::SchedulerConfig;
use loraflow::core::ids::JobId;
use loraflow::core::job::JobEvent;
use loraflow::store::FeedFilter;
use tokio_util::sync::CancellationToken;

const WORKERS: u32 = 4;
const SLOTS: u32 = 4;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn describe(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    )
}

struct Bench {
    server: TestServer,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Whether workers lease a step for every free slot in one poll.
    batch: bool,
    postgres: bool,
}

/// PostgreSQL's write transactions and WAL bytes so far, cluster-wide:
/// each write transaction is a WAL flush (fsync) at its commit. The
/// transaction id counter moves once per transaction that writes (this
/// query's own `pg_current_xact_id` counts one); the WAL position is the
/// bytes written.
async fn pg_writes() -> Option<(i64, f64)> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&common::server::database_url())
        .await
        .ok()?;
    let writes = sqlx::query_as(
        "SELECT pg_current_xact_id()::text::int8, (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8",
    )
    .fetch_one(&mut c)
    .await
    .ok();
    let _ = c.close().await;
    writes
}

/// How the store's connections reach PostgreSQL (the other client
/// sessions on the bench's database, read while the server runs): over TLS
/// or not, by TCP or a Unix socket. TLS costs a step about 5–10% of its
/// CPU on loopback (docs/scheduler.md); the store goes without it there
/// unless the URL names an `sslmode`. `None` when it cannot be read.
async fn pg_transport() -> Option<(String, bool)> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&common::server::database_url())
        .await
        .ok()?;
    let (tls, plain, socket): (i64, i64, bool) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl),
                coalesce(bool_and(a.client_addr IS NULL), false)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
           AND a.backend_type = 'client backend'",
    )
    .fetch_one(&mut c)
    .await
    .ok()?;
    let _ = c.close().await;
    let how = match (tls, plain) {
        (0, 0) => return None,
        (_, 0) => "TLS".to_owned(),
        (0, _) => "no TLS".to_owned(),
        (t, p) => format!("{t} sessions with TLS, {p} without"),
    };
    Some((
        format!(
            "PostgreSQL (the store's {} sessions) over {}, {how}",
            tls + plain,
            if socket { "a Unix socket" } else { "TCP" },
        ),
        tls > 0,
    ))
}

/// Write transactions and WAL bytes per unit since `before`.
async fn pg_writes_per(before: Option<(i64, f64)>, units: usize) -> String {
    match (before, pg_writes().await) {
        (Some((x0, w0)), Some((x1, w1))) => format!(
            "; PostgreSQL {:.2} write transactions and {:.1} KiB of WAL",
            // Less the counter's own transaction.
            (x1 - x0 - 1) as f64 / units as f64,
            (w1 - w0) / 1024.0 / units as f64
        ),
        _ => String::new(),
    }
}

impl Bench {
    async fn start(backend: Backend, batch: bool) -> Option<Self> {
        let deployment = Deployment::new(backend).await?;
        let server = TestServer::start_in(
            &deployment,
            ServerSetup {
                custom_kinds: vec![NOOP.into()],
                scheduler: Some(SchedulerConfig {
                    poll_timeout: Duration::from_secs(30),
                    ..SchedulerConfig::default()
                }),
                ..Default::default()
            },
        )
        .await;
        Some(Self {
            server,
            stop: CancellationToken::new(),
            workers: Vec::new(),
            batch,
            postgres: matches!(backend, Backend::Postgres),
        })
    }

    fn connect_workers(&mut self) {
        for n in 1..=WORKERS {
            let w = bare_worker_polling(
                self.server.addr,
                self.server.tmp.path(),
                n,
                SLOTS,
                self.batch,
            )
            .with(Arc::new(Noop::default()));
            self.workers.push(tokio::spawn(w.run(self.stop.clone())));
        }
    }

    /// A three-step job's spec (60 s heartbeat timeout, quick retries).
    fn spec(&self) -> loraflow::core::job::JobSpec {
        let workflow = three_steps(Duration::from_secs(60), quick_retries(3));
        spec_with(&self.server.dataset_uri, workflow)
    }

    /// Follow the feed from its head; report each job's review as it comes.
    async fn reviews(&self) -> tokio::sync::mpsc::UnboundedReceiver<(JobId, Instant)> {
        let store = self.server.engine.store().clone();
        let head = store.feed().head().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let feed = store.feed().subscribe(head, FeedFilter::all());
            let mut feed = std::pin::pin!(feed);
            while let Some(Ok(e)) = feed.next().await {
                if matches!(e.payload, JobEvent::ReviewRequested(_))
                    && tx.send((e.job_id.clone(), Instant::now())).is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// The store's group commit so far: transactions written, commits in them.
    fn grouped(&self) -> (u64, f64) {
        let h = self.server.engine.store().commits_per_transaction();
        (h.get_sample_count(), h.get_sample_sum())
    }

    /// Commits per write transaction of the engine's store since `before`.
    fn grouped_since(&self, before: (u64, f64)) -> String {
        let (count, sum) = self.grouped();
        let transactions = count - before.0;
        if transactions == 0 {
            return String::new();
        }
        format!(
            "; {:.2} commits per store transaction",
            (sum - before.1) / transactions as f64
        )
    }

    /// `n` base models of other tenants, 50 to a tenant, in the records
    /// the engine keeps registrations in; checked to load as the engine
    /// reads them.
    async fn other_tenants_models(&self, n: usize) {
        use loraflow::core::catalogue::{CustomModel, Engine, ModelFamily};
        use loraflow::core::ids::{BaseModelId, TenantId};
        const PER_TENANT: usize = 50;
        let records = self.server.engine.store().records();
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let records = records.clone();
                tokio::spawn(async move {
                    for i in (w..n).step_by(16) {
                        let (tenant, name) = (
                            format!("other-{}", i / PER_TENANT),
                            format!("model-{}", i % PER_TENANT),
                        );
                        let model = CustomModel {
                            name: BaseModelId::from(name.as_str()),
                            uri: format!("s3://{tenant}-models/checkpoints/{name}/"),
                            label: format!("{name}, fine-tuned for product shots"),
                            family: ModelFamily::Sdxl,
                            engines: vec![Engine::Native],
                            min_vram_gb: 24,
                            pixel_multiple: None,
                            evidence: "unet/config.json cross_attention_dim 2048".to_owned(),
                            registered_at: chrono::Utc::now(),
                        };
                        let value = serde_json::to_value(&model).expect("a model as JSON");
                        records
                            .insert("base_model", &tenant, &name, &value)
                            .await
                            .expect("write another tenant's model");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("a writer of models");
        }
        let loaded = self
            .server
            .engine
            .base_models_of(&TenantId::from("other-0"))
            .await
            .expect("read a tenant's models");
        assert_eq!(
            loaded.len(),
            n.min(PER_TENANT),
            "the engine reads the models written"
        );
    }

    async fn burst(&mut self, jobs: usize, clients: usize) -> String {
        let models = env("BENCH_TENANT_MODELS", 0) as usize;
        if models > 0 {
            self.other_tenants_models(models).await;
            println!("the store holds {models} base models of other tenants");
        }
        let mut reviews = self.reviews().await;
        let writes = self.pg_writes().await;
        let grouped = self.grouped();
        let cpu = cpu_seconds();
        let t = Instant::now();
        let mut callers = Vec::new();
        for c in 0..clients {
            let (engine, spec) = (self.server.engine.clone(), self.spec());
            let n = jobs / clients + usize::from(c < jobs % clients);
            callers.push(tokio::spawn(async move {
                for _ in 0..n {
                    common::create_job(&engine, spec.clone()).await;
                }
            }));
        }
        for c in callers {
            c.await.expect("a create_job caller");
        }
        let queued_in = t.elapsed();
        let cpu = cpu_per(cpu, jobs);
        println!(
            "create_job: {jobs} jobs by {clients} concurrent clients in {:.2} s = {:.0} jobs/s; per job {cpu}{}{}",
            queued_in.as_secs_f64(),
            jobs as f64 / queued_in.as_secs_f64(),
            pg_writes_per(writes, jobs).await,
            self.grouped_since(grouped)
        );
        let writes = self.pg_writes().await;
        let grouped = self.grouped();
        let cpu = cpu_seconds();
        let t = Instant::now();
        self.connect_workers();
        for _ in 0..jobs {
            reviews.recv().await.expect("reviews follow");
        }
        let took = t.elapsed().as_secs_f64();
        let cpu = cpu_per(cpu, jobs * 3);
        format!(
            "burst: {jobs} jobs queued in {:.1} s; {} steps run in {took:.2} s = {:.0} steps/s ({:.0} jobs/s) with {} workers x {SLOTS} slots; per step {cpu}{}{}",
            queued_in.as_secs_f64(),
            jobs * 3,
            (jobs * 3) as f64 / took,
            jobs as f64 / took,
            WORKERS,
            pg_writes_per(writes, jobs * 3).await,
            self.grouped_since(grouped)
        )
    }

    /// [`pg_writes`] on PostgreSQL; `None` on SQLite.
    async fn pg_writes(&self) -> Option<(i64, f64)> {
        if self.postgres {
            pg_writes().await
        } else {
            None
        }
    }

    async fn paced(&self, jobs: usize, rate: u64) -> Vec<String> {
        let mut reviews = self.reviews().await;
        let mut started = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        let (tx, mut created) = tokio::sync::mpsc::unbounded_channel();
        let first = self.server.engine.store().feed().head().await.unwrap();
        for _ in 0..jobs {
            tick.tick().await;
            let (engine, spec, tx) = (self.server.engine.clone(), self.spec(), tx.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let id = common::create_job(&engine, spec).await;
                let _ = tx.send((id, t0));
            });
        }
        drop(tx);
        while let Some((id, t0)) = created.recv().await {
            started.insert(id, t0);
        }
        let mut e2e = Vec::new();
        while e2e.len() < jobs {
            let (id, at) = reviews.recv().await.expect("reviews follow");
            if let Some(t0) = started.get(&id) {
                e2e.push(at.duration_since(*t0).as_secs_f64() * 1e3);
            }
        }
        let events = self
            .server
            .engine
            .store()
            .feed()
            .read(first, 1_000_000, &FeedFilter::all())
            .await
            .unwrap();
        let mut queued = HashMap::new();
        let mut submitted = HashMap::new();
        let mut ready_to_leased = Vec::new();
        let mut three_steps = Vec::new();
        // The slowest job: its place among the jobs submitted, when.
        let mut slowest: Option<(f64, usize, chrono::DateTime<chrono::Utc>)> = None;
        for e in &events {
            match &e.payload {
                JobEvent::JobSubmitted(s) => {
                    let place = submitted.len() + 1;
                    submitted.insert(e.job_id.clone(), (s.submitted_at, place));
                }
                JobEvent::ReviewRequested(r) => {
                    if let Some((s, place)) = submitted.get(&e.job_id) {
                        let ms = (r.requested_at - *s).as_seconds_f64() * 1e3;
                        three_steps.push(ms);
                        if slowest.is_none_or(|(m, ..)| ms > m) {
                            slowest = Some((ms, *place, *s));
                        }
                    }
                }
                JobEvent::StepQueued(q) => {
                    queued.insert(
                        (e.job_id.clone(), q.step_id.clone(), q.attempt),
                        q.queued_at,
                    );
                }
                JobEvent::StepLeased(l) => {
                    if let Some(q) = queued.get(&(e.job_id.clone(), l.step_id.clone(), l.attempt)) {
                        ready_to_leased.push((l.leased_at - *q).as_seconds_f64() * 1e3);
                    }
                }
                _ => {}
            }
        }
        vec![
            format!("paced: {jobs} jobs at {rate} jobs/s ({} steps/s)", rate * 3),
            describe("  ready -> leased", ready_to_leased),
            describe("  three steps, submitted -> review", three_steps),
            describe("  end to end, create_job call -> review seen", e2e),
            slowest.map_or_else(String::new, |(ms, place, at)| {
                format!(
                    "  the slowest job: {ms:.2} ms, job {place} of {jobs}, submitted at {}",
                    at.format("%H:%M:%S%.3f")
                )
            }),
        ]
    }

    async fn finish(self) {
        self.stop.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        self.server.stop().await;
    }
}

/// Resident memory of this process, in MiB (Linux; NaN elsewhere).
/// CPU seconds (user and system) spent so far by this process and by the
/// PostgreSQL server's processes (all of them: another client of the
/// cluster counts too), from `/proc` (in USER_HZ, 100 per second).
fn cpu_seconds() -> (f64, f64) {
    fn of(stat: &str) -> Option<(String, f64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((comm, ticks / 100.0))
    }
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| of(&s))
        .map_or(f64::NAN, |(_, s)| s);
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some((comm, s)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| of(&s))
            && comm == "postgres"
        {
            postgres += s;
        }
    }
    (own, postgres)
}

/// CPU milliseconds per unit since `before`: this process, PostgreSQL.
fn cpu_per(before: (f64, f64), units: usize) -> String {
    let (own, pg) = cpu_seconds();
    let per = |s: f64| s * 1e3 / units as f64;
    format!(
        "CPU {:.2} ms in this process + {:.2} ms in PostgreSQL",
        per(own - before.0),
        per(pg - before.1)
    )
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

/// A whole published history (created → published) for job `id`, from the
/// domain's own decisions: a template decided once, given each job's id.
fn finished_history(template: &[JobEvent], id: &JobId) -> Vec<JobEvent> {
    template
        .iter()
        .map(|e| match e {
            JobEvent::JobCreated(c) => {
                let mut c = c.clone();
                c.job_id = id.clone();
                JobEvent::JobCreated(c)
            }
            e => e.clone(),
        })
        .collect()
}

/// Fill the store with finished jobs until it holds about `events` events;
/// 16 writers, each job one commit. Returns (jobs, events written).
async fn fill_history(store: &loraflow::store::Store, events: usize) -> (usize, usize) {
    let template = loraflow::core::job::canned::histories::published();
    let per_job = template.len();
    let jobs = events.div_ceil(per_job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..16 {
        let (store, next, template) = (store.clone(), next.clone(), template.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if j >= jobs {
                    return;
                }
                let id = JobId::new(format!("done-{j:07}"));
                store
                    .append_events(&id, 0, finished_history(&template, &id), Default::default())
                    .await
                    .expect("append a finished job");
            }
        }));
    }
    for w in writers {
        w.await.expect("a history writer");
    }
    (jobs, jobs * per_job)
}

/// Until the scheduler of `engine` has leased a step of `job`.
async fn first_lease(engine: &loraflow::Engine, job: &JobId) {
    let feed = engine
        .store()
        .feed()
        .subscribe(0, FeedFilter::job(job.clone()));
    let mut feed = std::pin::pin!(feed);
    while let Some(e) = feed.next().await {
        if matches!(e.expect("the job's feed").payload, JobEvent::StepLeased(_)) {
            return;
        }
    }
}

/// Fill, queue one job, restart, and time the first lease.
async fn restart(backend: Backend, events: usize) -> Vec<String> {
    let Some(deployment) = Deployment::new(backend).await else {
        return Vec::new();
    };
    let setup = || ServerSetup {
        custom_kinds: vec![NOOP.into()],
        ..Default::default()
    };
    let server = TestServer::start_in(&deployment, setup()).await;
    let t = Instant::now();
    let (jobs, written) = fill_history(server.engine.store(), events).await;
    let fill = t.elapsed().as_secs_f64();
    let workflow = three_steps(Duration::from_secs(60), quick_retries(3));
    let job = common::create_job(&server.engine, spec_with(&server.dataset_uri, workflow)).await;
    let deployment = server.halt().await;
    let rss_before = rss_mib();
    let t = Instant::now();
    let server = TestServer::start_in(&deployment, setup()).await;
    let started = t.elapsed().as_secs_f64();
    let stop = CancellationToken::new();
    let worker = bare_worker(server.addr, server.tmp.path(), 1, 1).with(Arc::new(Noop::default()));
    let worker = tokio::spawn(worker.run(stop.clone()));
    first_lease(&server.engine, &job).await;
    let leased = t.elapsed().as_secs_f64();
    let rss_after = rss_mib();
    // What a start from position 0 costs on the same store (the start
    // before the open-jobs index): read the whole feed in pages of 500 and
    // fold it into a scheduler state.
    let t = Instant::now();
    let mut replay =
        loraflow::core::schedule::SchedulerState::new(server.engine.services().catalogue.clone());
    let (mut after, mut read) = (0, 0usize);
    loop {
        let page = server
            .engine
            .store()
            .feed()
            .read(after, 500, &FeedFilter::all())
            .await
            .expect("read the feed");
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len();
        for e in &page {
            replay.apply(e.position, &e.job_id, &e.payload);
        }
    }
    let replayed = t.elapsed().as_secs_f64();
    let loaded = server.engine.scheduler_state();
    let (jobs_now, queued_now) = (loaded.open_jobs(), loaded.queued().count());
    stop.cancel();
    let _ = worker.await;
    server.stop().await;
    vec![
        format!(
            "history: {written} events of {jobs} finished jobs written in {fill:.1} s ({:.0} events/s)",
            written as f64 / fill
        ),
        format!(
            "restart: engine ready in {:.0} ms; first lease {:.0} ms after the start; resident memory {rss_before:.0} MiB before, {rss_after:.0} MiB after; the scheduler holds {jobs_now} open jobs, {queued_now} queued steps",
            started * 1e3,
            leased * 1e3
        ),
        format!(
            "for comparison, a fold of the whole feed from position 0 (the earlier start): {read} events in {:.2} s",
            replayed
        ),
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let jobs = env("BENCH_JOBS", 1000) as usize;
    let seconds = env("BENCH_PACED_SECONDS", 10);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "3,30".into())
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.trim()
                .parse()
                .expect("BENCH_RATES: jobs per second, comma-separated")
        })
        .collect();
    let clients = env("BENCH_CLIENTS", 16).max(1) as usize;
    let batch = env("BENCH_BATCH", 1) != 0;
    let args: Vec<String> = std::env::args().collect();
    let history = args
        .iter()
        .position(|a| a == "--history")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().expect("--history: a number of events"))
        .or_else(|| std::env::var("BENCH_HISTORY").ok()?.parse().ok());
    let backends: Vec<Backend> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(|b| match b.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            other => panic!("BENCH_BACKENDS: {other:?} is not sqlite or postgres"),
        })
        .collect();
    rt.block_on(async {
        for backend in backends {
            if let Some(events) = history {
                println!("== {backend:?}, restart after history");
                for line in restart(backend, events).await {
                    println!("{line}");
                }
                continue;
            }
            let Some(mut bench) = Bench::start(backend, batch).await else {
                continue;
            };
            let polls = if batch {
                "PollSteps: one poll per worker for all its free slots"
            } else {
                "PollStep: one poll per slot, one step each"
            };
            println!("== {backend:?} ({polls})");
            // Whether the store's sessions use TLS (the anchor's follow).
            #[cfg_attr(not(feature = "anchor"), allow(unused_variables))]
            let store_tls = match backend {
                Backend::Postgres => pg_transport().await.map(|(transport, tls)| {
                    println!("{transport}");
                    tls
                }),
                Backend::Sqlite => None,
            };
            println!("{}", bench.burst(jobs, clients).await);
            for &rate in &rates {
                for line in bench.paced((rate * seconds) as usize, rate).await {
                    println!("{line}");
                }
            }
            bench.finish().await;
            #[cfg(feature = "anchor")]
            if matches!(backend, Backend::Postgres) {
                // As fast a dispatch as the bench's fastest paced one.
                let rate = rates.iter().max().map_or(90, |r| r * 3);
                println!(
                    "== the anchor: apalis-postgres 1.0 on the same PostgreSQL (LISTEN/NOTIFY, 16 concurrent handlers)"
                );
                // The anchor reaches PostgreSQL as the store did: without
                // TLS where the store went without it.
                let mut url = common::server::database_url();
                if store_tls == Some(false) && !url.contains("sslmode") {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str("sslmode=disable");
                    println!("apalis' URL: {url}");
                }
                for line in anchor::run(&url, jobs, rate, seconds).await {
                    println!("{line}");
                }
            }
        }
    });
}
