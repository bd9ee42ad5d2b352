//! The delivery worker: takes due deliveries from the outbox, sends each,
//! records the outcome. Attempts to different URLs run side by side (up to
//! `concurrency`); a URL has at most one delivery armed at a time, so its
//! events go out one after another, in feed order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{HeaderName, HeaderValue};
use loraflow_core::webhook::Delivery;
use loraflow_store::Store;
use loraflow_store::webhooks::{AfterAttempt, AttemptRecord};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Webhooks;
use super::backoff::delay;
use super::http::HttpClient;
use super::signature::{
    ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign,
};

/// Beyond the request timeout, how long a claim lasts: a process that dies
/// mid-attempt delays the event by about this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct Worker {
    store: Store,
    webhooks: Arc<Webhooks>,
    http: HttpClient,
}

/// How an attempt went, before it is recorded.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

fn header(name: &'static str, value: String) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::try_from(value).ok()?,
    ))
}

impl Worker {
    pub(crate) fn new(store: Store, webhooks: Arc<Webhooks>) -> Self {
        Self {
            store,
            webhooks,
            http: HttpClient::new(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.store.services().clock.now()
    }

    /// Run until `shutdown` is cancelled, then let the attempts in flight
    /// finish and be recorded.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let outbox = self.store.webhooks();
        let config = &self.webhooks.config;
        let mut changes = outbox.changes();
        let mut in_flight = JoinSet::new();
        let lease = chrono::Duration::from_std(config.request_timeout + CLAIM_MARGIN)
            .unwrap_or(chrono::Duration::MAX);
        loop {
            // Seen before looking, so a change made while looking wakes the wait.
            changes.borrow_and_update();
            let mut wait = config.poll_interval;
            let free = config.concurrency.max(1).saturating_sub(in_flight.len());
            if free > 0 && self.start_due(&mut in_flight, free, lease).await {
                match outbox.next_due().await {
                    Ok(Some(at)) => {
                        let until = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
                        wait = wait.min(until);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "cannot read the next webhook due time"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(e) = done {
                        warn!(error = %e, "a webhook attempt task failed");
                    }
                }
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Claim and start up to `free` due deliveries. `false` when the
    /// database failed: the caller then waits a poll interval rather than
    /// for a due time it could not act on.
    async fn start_due(
        &self,
        in_flight: &mut JoinSet<()>,
        free: usize,
        lease: chrono::Duration,
    ) -> bool {
        let outbox = self.store.webhooks();
        let now = self.now();
        let due = match outbox.due(now, free).await {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "cannot read due webhook deliveries");
                return false;
            }
        };
        for d in due {
            match outbox.claim(&d, now + lease).await {
                Ok(true) => {
                    in_flight.spawn(self.clone().attempt(d));
                }
                Ok(false) => {} // another process took it
                Err(e) => {
                    warn!(error = %e, "cannot claim a webhook delivery");
                    return false;
                }
            }
        }
        true
    }

    /// One attempt of a claimed delivery: sign, send, record.
    async fn attempt(self, d: Delivery) {
        let config = &self.webhooks.config;
        let started = tokio::time::Instant::now();
        let sent_at = self.now();
        let attempt = d.attempts + 1;
        let outcome = match self.webhooks.secret(&d.tenant) {
            None => Outcome {
                status: None,
                error: Some(format!(
                    "no webhook secret is configured for tenant {}; nothing was sent (set webhook_secret under [[auth.tenants]])",
                    d.tenant
                )),
            },
            Some(secret) => {
                let ts = sent_at.timestamp();
                let headers = [
                    header(EVENT_ID_HEADER, d.event_id.clone()),
                    header(EVENT_TYPE_HEADER, d.event_type.clone()),
                    header(TIMESTAMP_HEADER, ts.to_string()),
                    header(SIGNATURE_HEADER, sign(secret, ts, d.body.as_bytes())),
                    header(ATTEMPT_HEADER, attempt.to_string()),
                ]
                .into_iter()
                .flatten()
                .collect();
                let body = Bytes::from(d.body.clone());
                match self
                    .http
                    .post(&d.url, headers, body, config.request_timeout)
                    .await
                {
                    Ok(a) if (200..300).contains(&a.status) => Outcome {
                        status: Some(a.status),
                        error: None,
                    },
                    Ok(a) => Outcome {
                        status: Some(a.status),
                        error: Some(if a.body_start.is_empty() {
                            format!("HTTP {}", a.status)
                        } else {
                            format!("HTTP {}: {}", a.status, a.body_start)
                        }),
                    },
                    Err(e) => Outcome {
                        status: None,
                        error: Some(e),
                    },
                }
            }
        };
        let at = self.now();
        let give_up = chrono::Duration::from_std(config.give_up_after).ok();
        let after = match &outcome.error {
            None => AfterAttempt::Delivered,
            Some(_) if give_up.is_some_and(|g| !g.is_zero() && at - d.enqueued_at >= g) => {
                AfterAttempt::Abandon
            }
            Some(_) => {
                let wait = delay(
                    attempt,
                    config.initial_backoff,
                    config.max_backoff,
                    rand::random::<f64>(),
                );
                AfterAttempt::RetryAt(
                    at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                )
            }
        };
        let counts = &self.webhooks.counts;
        match (&outcome.error, after) {
            (None, _) => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                debug!(url = %d.url, event = %d.event_id, attempt, "webhook delivered")
            }
            (Some(e), AfterAttempt::Abandon) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                counts.abandoned.fetch_add(1, Ordering::Relaxed);
                warn!(url = %d.url, event = %d.event_id, attempt, error = %e, "webhook abandoned")
            }
            (Some(e), _) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                debug!(url = %d.url, event = %d.event_id, attempt, error = %e, "webhook attempt failed")
            }
        }
        let record = AttemptRecord {
            at,
            status: outcome.status,
            error: outcome.error,
            duration: started.elapsed(),
            after,
        };
        // The request was made: losing its record would send it again once
        // the claim ends, so a failing database gets a few tries.
        let outbox = self.store.webhooks();
        for i in 0..4u32 {
            match outbox.record(&d, &record).await {
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, event = %d.event_id, "cannot record a webhook attempt; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << i)).await;
                }
            }
        }
    }
}
