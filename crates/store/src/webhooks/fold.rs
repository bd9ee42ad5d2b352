//! The pure part of filling the outbox: which subscriptions a batch of feed
//! events creates, and which deliveries it makes. The backends store the
//! result in the transaction that moves the outbox checkpoint.

use std::collections::HashMap;

use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::job::JobEvent;
use loraflow_core::webhook::{WebhookBody, event_type, filter_matches};

use crate::error::Result;
use crate::event::{Position, StoredEvent};

/// A job's webhook URL and its filters, from the job's `JobCreated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub job_id: JobId,
    pub url: String,
    pub tenant: TenantId,
    pub events: Vec<String>,
    /// Where the `JobCreated` that made it is in the feed.
    pub position: Position,
}

/// A delivery to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDelivery {
    pub job_id: JobId,
    pub url: String,
    pub sequence: u64,
    pub position: Position,
    pub tenant: TenantId,
    pub event_type: &'static str,
    pub body: String,
}

/// The subscriptions made by the `JobCreated` events among `events`.
pub(crate) fn created(events: &[&StoredEvent]) -> Vec<Subscription> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            JobEvent::JobCreated(c) => Some((e, c)),
            _ => None,
        })
        .flat_map(|(e, c)| {
            c.spec.webhooks.iter().map(move |w| Subscription {
                job_id: e.job_id.clone(),
                url: w.url.clone(),
                tenant: c.spec.tenant.clone(),
                events: w.events.clone(),
                position: e.position,
            })
        })
        .collect()
}

/// The deliveries `events` make for `subscriptions` (those of the events'
/// jobs), in feed order.
pub(crate) fn deliveries(
    events: &[&StoredEvent],
    subscriptions: &[Subscription],
) -> Result<Vec<NewDelivery>> {
    let mut by_job: HashMap<&JobId, Vec<&Subscription>> = HashMap::new();
    for s in subscriptions {
        by_job.entry(&s.job_id).or_default().push(s);
    }
    let mut out = Vec::new();
    for e in events {
        let Some(subs) = by_job.get(&e.job_id) else {
            continue;
        };
        let kind = event_type(&e.payload);
        let wanted: Vec<_> = subs
            .iter()
            .filter(|s| s.events.iter().any(|f| filter_matches(f, kind)))
            .collect();
        for s in wanted {
            // The body is made once, here, so every attempt sends the same
            // bytes.
            let body = WebhookBody::new(
                &e.job_id,
                &s.tenant,
                e.position,
                e.sequence,
                e.recorded_at,
                &e.payload,
            );
            out.push(NewDelivery {
                job_id: e.job_id.clone(),
                url: s.url.clone(),
                sequence: e.sequence,
                position: e.position,
                tenant: s.tenant.clone(),
                event_type: kind,
                body: serde_json::to_string(&body)?,
            });
        }
    }
    Ok(out)
}
