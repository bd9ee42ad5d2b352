//! Prometheus metrics of one server process, scraped at `/metrics`.
//!
//! Three kinds:
//! - read at scrape time from the views and the live scheduler: jobs by
//!   state, queue depth and oldest age by step kind and the capabilities
//!   the steps require, leases live, executors connected, the webhook
//!   backlog (deliveries due), each feed reader's lag (views, webhook
//!   outbox, scheduler);
//! - counted as events arrive, by a task following the event feed from
//!   the moment the server started: events by type, ready → leased wait
//!   and step duration histograms by step kind, lease expiries, step
//!   retries;
//! - counted where the work happens: the store's commit latency and
//!   commits per write transaction (histograms), webhook attempts delivered, failed and abandoned.
//!
//! Counters start at zero with the process, as Prometheus expects.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use loraflow_core::job::JobEvent;
use loraflow_core::views::JobListFilter;
use loraflow_core::workflow::Requirements;
use loraflow_store::StoredEvent;
use loraflow_store::feed::FeedFilter;
use loraflow_store::views::JobListQuery;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// Seconds, from 10 ms to about 3 hours.
const BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    10800.0,
];

struct Inner {
    registry: Registry,
    jobs: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_oldest: prometheus::GaugeVec,
    webhook_attempts: IntCounterVec,
    leases_live: IntGauge,
    executors: IntGauge,
    deliveries_due: IntGauge,
    feed_lag: IntGaugeVec,
    feed_head: IntGauge,
    events: IntCounterVec,
    wait: HistogramVec,
    duration: HistogramVec,
    expiries: IntCounter,
    retries: IntCounter,
    scrape_errors: IntCounter,
}

/// The metrics of one process; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("loraflow".into()), None)
            .expect("the prefix is a valid name");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str| {
            register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                    &["kind"],
                )
                .expect("valid metric"),
            )
        };
        let inner = Inner {
            jobs: gauge_vec("jobs", "Jobs by state.", &["state"]),
            queue_depth: gauge_vec(
                "queue_depth",
                "Steps waiting for an executor, by step kind and the capabilities they require.",
                &["kind", "requires"],
            ),
            queue_oldest: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "queue_oldest_age_seconds",
                        "Age of the oldest queued step, by step kind and the capabilities it requires.",
                    ),
                    &["kind", "requires"],
                )
                .expect("valid metric"),
            ),
            webhook_attempts: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "webhook_attempts_total",
                        "Webhook attempts this process made since start, by outcome (delivered, failed, abandoned: failed and given up).",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            leases_live: register(
                &r,
                IntGauge::new("leases_live", "Steps leased to executors now.")
                    .expect("valid metric"),
            ),
            executors: register(
                &r,
                IntGauge::new("executors_connected", "Executors registered and seen.")
                    .expect("valid metric"),
            ),
            deliveries_due: register(
                &r,
                IntGauge::new(
                    "webhook_deliveries_due",
                    "Webhook deliveries due now and not yet made (one per subscription).",
                )
                .expect("valid metric"),
            ),
            feed_lag: gauge_vec(
                "projection_feed_lag_events",
                "Events of the feed a reader has not applied yet (views, webhooks outbox, scheduler).",
                &["projection"],
            ),
            feed_head: register(
                &r,
                IntGauge::new("feed_head_position", "The event feed's last position.")
                    .expect("valid metric"),
            ),
            events: register(
                &r,
                IntCounterVec::new(
                    Opts::new("events_total", "Job events seen since start, by type."),
                    &["type"],
                )
                .expect("valid metric"),
            ),
            wait: histogram(
                "step_wait_seconds",
                "From a step becoming ready (queued, backoff over) to its lease, by step kind.",
            ),
            duration: histogram(
                "step_duration_seconds",
                "From a step's lease to its completion or failure, by step kind.",
            ),
            expiries: register(
                &r,
                IntCounter::new("lease_expiries_total", "Leases that expired since start.")
                    .expect("valid metric"),
            ),
            retries: register(
                &r,
                IntCounter::new("step_retries_total", "Steps retried since start.")
                    .expect("valid metric"),
            ),
            scrape_errors: register(
                &r,
                IntCounter::new(
                    "scrape_errors_total",
                    "Scrapes that could not read the store.",
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Follow `engine`'s event feed from its head now until `shutdown`,
    /// counting, and expose its store's commit latency and commits per
    /// transaction.
    pub fn follow(&self, engine: &Engine, shutdown: CancellationToken) {
        let store = engine.store();
        for histogram in [store.commit_latency(), store.commits_per_transaction()] {
            if let Err(e) = self.inner.registry.register(Box::new(histogram)) {
                tracing::warn!(error = %e, "metrics: a histogram of the store's commits is not exposed");
            }
        }
        let metrics = self.clone();
        let feed = engine.store().feed();
        tokio::spawn(async move {
            let head = match feed.head().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot read the feed head; not counting events");
                    return;
                }
            };
            let mut events = std::pin::pin!(
                feed.subscribe(head, FeedFilter::all())
                    .take_until(shutdown.cancelled_owned())
            );
            let mut steps = Steps::default();
            while let Some(item) = events.next().await {
                if let Ok(e) = item {
                    metrics.observe(&mut steps, &e);
                }
            }
        });
    }

    fn observe(&self, steps: &mut Steps, e: &StoredEvent) {
        let m = &self.inner;
        m.events.with_label_values(&[e.event_type.as_str()]).inc();
        let job = e.job_id.to_string();
        match &e.payload {
            JobEvent::StepQueued(q) => {
                let ready = q.queued_at.max(q.not_before);
                steps
                    .ready
                    .insert((job, q.step_id.to_string(), q.attempt), ready);
            }
            JobEvent::StepLeased(l) => {
                let key = (job, l.step_id.to_string(), l.attempt);
                if let Some(ready) = steps.ready.remove(&key) {
                    m.wait
                        .with_label_values(&[l.kind.as_str()])
                        .observe(seconds(ready, e.recorded_at));
                }
                steps.leased.insert(key, e.recorded_at);
            }
            JobEvent::StepCompleted(c) => {
                let key = (job, c.step_id.to_string(), c.attempt);
                if let Some(at) = steps.leased.remove(&key) {
                    m.duration
                        .with_label_values(&[c.kind.as_str()])
                        .observe(seconds(at, e.recorded_at));
                }
            }
            JobEvent::StepFailed(f) => {
                let key = (job, f.step_id.to_string(), f.attempt);
                if let Some(at) = steps.leased.remove(&key) {
                    m.duration
                        .with_label_values(&[f.kind.as_str()])
                        .observe(seconds(at, e.recorded_at));
                }
            }
            JobEvent::LeaseExpired(x) => {
                steps
                    .leased
                    .remove(&(job, x.step_id.to_string(), x.attempt));
                m.expiries.inc();
            }
            JobEvent::StepRetried(_) => m.retries.inc(),
            _ => {}
        }
    }

    /// Read what is read at scrape time, then render every metric in
    /// Prometheus' text format.
    pub async fn render(&self, engine: &Engine) -> String {
        if let Err(e) = self.refresh(engine).await {
            self.inner.scrape_errors.inc();
            tracing::warn!(error = %e, "metrics: reading the store failed");
        }
        let mut out = Vec::new();
        let families = self.inner.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    async fn refresh(&self, engine: &Engine) -> loraflow_store::Result<()> {
        let m = &self.inner;
        let store = engine.store();
        let head = store.feed().head().await?;
        m.feed_head.set(head as i64);
        let views = store.views().position().await?;
        let webhooks = store.webhooks().position().await?;
        m.feed_lag
            .with_label_values(&["views"])
            .set(head.saturating_sub(views) as i64);
        m.feed_lag
            .with_label_values(&["webhooks"])
            .set(head.saturating_sub(webhooks) as i64);
        let (scheduler, leases) = engine.scheduler_figures();
        m.feed_lag
            .with_label_values(&["scheduler"])
            .set(head.saturating_sub(scheduler) as i64);
        m.leases_live.set(leases as i64);
        let counts = engine.webhook_counts();
        for (outcome, total) in [
            ("delivered", counts.delivered),
            ("failed", counts.failed),
            ("abandoned", counts.abandoned),
        ] {
            let c = m.webhook_attempts.with_label_values(&[outcome]);
            c.inc_by(total.saturating_sub(c.get()));
        }

        // Jobs by state, every tenant's.
        let mut by_state: HashMap<String, i64> = loraflow_core::job::JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        let mut token = None;
        loop {
            let page = store
                .views()
                .list_jobs(&JobListQuery {
                    filter: JobListFilter::default(),
                    page_size: 500,
                    page_token: token,
                })
                .await?;
            for j in &page.jobs {
                *by_state.entry(j.state.as_str().to_owned()).or_default() += 1;
            }
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        for (state, n) in by_state {
            m.jobs.with_label_values(&[state.as_str()]).set(n);
        }

        // The queue, by step kind and required capabilities.
        let now = Utc::now();
        let queue = store.views().queue().await?;
        m.queue_depth.reset();
        m.queue_oldest.reset();
        let mut depth: HashMap<(String, String), (i64, f64)> = HashMap::new();
        for entry in &queue {
            let key = (
                entry.step.kind.as_str().to_owned(),
                requires_label(&entry.step.requires),
            );
            let d = depth.entry(key).or_default();
            d.0 += 1;
            d.1 = d.1.max(seconds(entry.step.queued_at, now));
        }
        for ((kind, requires), (n, oldest)) in depth {
            let labels = [kind.as_str(), requires.as_str()];
            m.queue_depth.with_label_values(&labels).set(n);
            m.queue_oldest.with_label_values(&labels).set(oldest);
        }

        m.executors.set(engine.fleet_members().len() as i64);
        m.deliveries_due
            .set(store.webhooks().due(now, 10_000).await?.len() as i64);
        Ok(())
    }

    /// Where the views stand against the feed: `(head, views, webhooks)`.
    pub async fn positions(engine: &Engine) -> loraflow_store::Result<(u64, u64, u64)> {
        let store = engine.store();
        Ok((
            store.feed().head().await?,
            store.views().position().await?,
            store.webhooks().position().await?,
        ))
    }
}

/// The capabilities a step requires, as one label value: `gpu`,
/// `engine=native`, `min_vram_gb=12` and its labels, comma-separated in that
/// order; `none` when it requires nothing.
fn requires_label(r: &Requirements) -> String {
    let mut parts = Vec::new();
    if r.gpu {
        parts.push("gpu".to_owned());
    }
    if let Some(e) = &r.engine {
        parts.push(format!("engine={}", e.as_str()));
    }
    if let Some(v) = r.min_vram_gb {
        parts.push(format!("min_vram_gb={v}"));
    }
    parts.extend(r.labels.iter().cloned());
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(",")
    }
}

/// Steps between events, by (job, step, attempt).
#[derive(Default)]
struct Steps {
    ready: HashMap<(String, String, u32), DateTime<Utc>>,
    leased: HashMap<(String, String, u32), DateTime<Utc>>,
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0) as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_capabilities_read_as_one_label() {
        assert_eq!(requires_label(&Requirements::default()), "none");
        let r = Requirements {
            gpu: true,
            engine: Some(loraflow_core::catalogue::Engine::Native),
            min_vram_gb: Some(12),
            labels: ["region=eu".to_owned()].into(),
        };
        assert_eq!(
            requires_label(&r),
            "gpu,engine=native,min_vram_gb=12,region=eu"
        );
    }
}
