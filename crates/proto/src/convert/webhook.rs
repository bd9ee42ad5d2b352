//! Webhooks: `Webhook` in a job spec, and the delivery log
//! (`WebhookDelivery`, `WebhookAttempt`, `ListWebhookDeliveriesRequest`).
//!
//! URLs and event filters are checked by the aggregate when the job is
//! created, like the rest of the spec, so both directions here are plain.

use loraflow_core::ids::JobId;
use loraflow_core::validation::Violations;
use loraflow_core::webhook::{Delivery, DeliveryAttempt, DeliveryState, WebhookSpec};

use super::time::{duration, timestamp};
use crate::aip;
use crate::pb::v1 as pb;

impl From<WebhookSpec> for pb::Webhook {
    fn from(w: WebhookSpec) -> Self {
        Self {
            url: w.url,
            events: w.events,
        }
    }
}

impl From<pb::Webhook> for WebhookSpec {
    fn from(w: pb::Webhook) -> Self {
        Self {
            url: w.url,
            events: w.events,
        }
    }
}

impl From<DeliveryState> for pb::WebhookDeliveryState {
    fn from(s: DeliveryState) -> Self {
        match s {
            DeliveryState::Pending => Self::Pending,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Abandoned => Self::Abandoned,
        }
    }
}

impl From<&DeliveryAttempt> for pb::WebhookAttempt {
    fn from(a: &DeliveryAttempt) -> Self {
        Self {
            attempt: a.attempt,
            time: Some(timestamp(a.at)),
            status_code: a.status.map_or(0, u32::from),
            error: a.error.clone().unwrap_or_default(),
            duration: Some(duration(std::time::Duration::from_millis(a.duration_ms))),
            delivered: a.delivered,
        }
    }
}

/// A delivery with its attempts (those of other deliveries are ignored).
pub fn delivery_to_wire(d: &Delivery, attempts: &[DeliveryAttempt]) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        event_id: d.event_id.clone(),
        url: d.url.clone(),
        event_type: d.event_type.clone(),
        position: d.position,
        sequence: d.sequence,
        state: pb::WebhookDeliveryState::from(d.state) as i32,
        enqueue_time: Some(timestamp(d.enqueued_at)),
        next_attempt_time: d
            .next_attempt_at
            .filter(|_| d.state == DeliveryState::Pending)
            .map(timestamp),
        deliver_time: d.delivered_at.map(timestamp),
        attempts: attempts
            .iter()
            .filter(|a| a.sequence == d.sequence && a.url == d.url && a.job_id == d.job_id)
            .map(Into::into)
            .collect(),
    }
}

impl pb::ListWebhookDeliveriesRequest {
    pub fn job_id(&self) -> Result<JobId, Violations> {
        aip::job_id(&self.job_id).map_err(|v| super::nest(v, "job_id"))
    }

    /// The page size (AIP-158), violations under `page_size`.
    pub fn page_size(&self) -> Result<usize, Violations> {
        aip::page_size(self.page_size).map_err(|v| super::nest(v, "page_size"))
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    #[test]
    fn a_delivery_carries_only_its_own_attempts() {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let d = Delivery {
            event_id: "j:3".into(),
            job_id: "j".into(),
            url: "https://a.example/h".into(),
            tenant: "acme".into(),
            position: 77,
            sequence: 3,
            event_type: "step:queued".into(),
            body: "{}".into(),
            state: DeliveryState::Delivered,
            attempts: 2,
            enqueued_at: at,
            next_attempt_at: None,
            delivered_at: Some(at),
            last_status: Some(200),
            last_error: None,
        };
        let attempt = |url: &str, n: u32, status: Option<u16>| DeliveryAttempt {
            job_id: "j".into(),
            url: url.into(),
            sequence: 3,
            attempt: n,
            at,
            status,
            error: status.is_none().then(|| "connection refused".into()),
            duration_ms: 1500,
            delivered: status == Some(200),
        };
        let attempts = [
            attempt("https://a.example/h", 1, None),
            attempt("https://b.example/h", 1, Some(200)),
            attempt("https://a.example/h", 2, Some(200)),
        ];
        let w = delivery_to_wire(&d, &attempts);
        assert_eq!(w.state, pb::WebhookDeliveryState::Delivered as i32);
        assert_eq!(w.attempts.len(), 2);
        assert_eq!(w.attempts[0].status_code, 0);
        assert_eq!(w.attempts[0].error, "connection refused");
        assert_eq!(w.attempts[1].status_code, 200);
        assert_eq!(w.attempts[1].duration.unwrap().seconds, 1);
        assert!(w.next_attempt_time.is_none());
    }

    #[test]
    fn webhooks_round_trip() {
        let w = WebhookSpec::new("https://a.example/h", ["step:*", "workflow:failed"]);
        assert_eq!(WebhookSpec::from(pb::Webhook::from(w.clone())), w);
    }
}
