//! Webhooks: each job's callback URLs get its events as signed HTTP POSTs,
//! in order, retried until the receiver acknowledges them.
//!
//! A job's spec lists its webhooks (`JobSpec::webhooks`: a URL and event
//! filters, see `loraflow_core::webhook`). The store fills an outbox from
//! the global feed, with its checkpoint in the same transaction, so every
//! matching event is queued exactly once even across crashes
//! (`loraflow_store::webhooks`). The delivery worker started by the engine
//! takes due deliveries, signs each with its tenant's secret, POSTs it, and
//! records the attempt; a failure is retried with capped exponential backoff
//! and jitter, and the URL's later events wait for it, so a receiver that
//! was down for hours gets every missed event, in order, once it is back.
//! The delivery log is [`Engine::webhook_deliveries`](crate::Engine::webhook_deliveries)
//! (gRPC `ListWebhookDeliveries`). `docs/webhooks.md` is the receiver's guide.
//!
//! Delivery is at least once: a process that dies between the receiver's 2xx
//! and the record sends the event again after its claim ends. Receivers drop
//! repeats by the `Loraflow-Event-Id` header. A clean shutdown lets the
//! attempts in flight finish and be recorded first.
//!
//! - [`signature`]: the headers, `sign` and `verify` (for receivers in Rust).
//! - `backoff`: retry delays.
//! - `http`: the HTTP client (hyper, rustls).
//! - `worker`: the delivery loop.
//! - `log`: reading the delivery log.

mod backoff;
mod http;
mod log;
pub mod signature;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use loraflow_core::ids::TenantId;
use loraflow_core::job::JobSpec;
use loraflow_core::validation::Violations;
use loraflow_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use crate::config::WebhooksConfig;
pub use log::{DeliveryPage, WebhookDelivery};
pub use signature::{
    ATTEMPT_HEADER, DEFAULT_TOLERANCE, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER,
    SignatureError, TIMESTAMP_HEADER, sign, verify,
};

/// The engine's webhook settings and each tenant's signing secret.
pub(crate) struct Webhooks {
    config: WebhooksConfig,
    secrets: HashMap<TenantId, Arc<[u8]>>,
    /// What this process's delivery worker did, for `/metrics`.
    counts: AttemptCounts,
}

/// Webhook attempts this process made since it started, by outcome.
#[derive(Debug, Default)]
pub(crate) struct AttemptCounts {
    pub delivered: AtomicU64,
    /// Attempts the receiver did not acknowledge (to be retried or abandoned).
    pub failed: AtomicU64,
    /// Deliveries given up on (`give_up_after` passed).
    pub abandoned: AtomicU64,
}

/// A copy of [`AttemptCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    pub delivered: u64,
    pub failed: u64,
    pub abandoned: u64,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Webhooks")
            .field("config", &self.config)
            .field(
                "tenants_with_secrets",
                &self.secrets.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Webhooks {
    pub(crate) fn new(config: WebhooksConfig, secrets: HashMap<TenantId, String>) -> Self {
        Self {
            config,
            secrets: secrets
                .into_iter()
                .map(|(t, s)| (t, Arc::from(s.into_bytes())))
                .collect(),
            counts: AttemptCounts::default(),
        }
    }

    /// The attempts made since the process started.
    pub(crate) fn counts(&self) -> WebhookCounts {
        let c = &self.counts;
        WebhookCounts {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn secret(&self, tenant: &TenantId) -> Option<&Arc<[u8]>> {
        self.secrets.get(tenant)
    }

    /// What the aggregate cannot check about a spec's webhooks: its tenant
    /// must have a secret to sign them with.
    pub(crate) fn check(&self, tenant: &TenantId, spec: &JobSpec) -> Violations {
        let mut v = Violations::default();
        if !spec.webhooks.is_empty() && self.secret(tenant).is_none() {
            v.push(
                "webhooks",
                format!(
                    "tenant {tenant} has no webhook secret to sign requests with; the operator sets webhook_secret for it under [[auth.tenants]]"
                ),
            );
        }
        v
    }

    /// Start the outbox runner and the delivery worker (unless disabled).
    pub(crate) fn start(
        self: &Arc<Self>,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        if !self.config.enabled {
            return Vec::new();
        }
        let outbox = store.webhooks().start_outbox(shutdown.clone());
        let outbox = tokio::spawn(async move {
            match outbox.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("webhook outbox stopped: {e}"),
                Err(e) => warn!("webhook outbox task failed: {e}"),
            }
        });
        let worker = worker::Worker::new(store.clone(), self.clone());
        vec![outbox, tokio::spawn(worker.run(shutdown.clone()))]
    }
}
