//! Deliveries and their attempts: the delivery log of a job's webhooks.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, TenantId};

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not acknowledged yet: due, waiting for its retry time, or waiting for
    /// an earlier event of the same webhook to be delivered first.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Retried for longer than the engine's `give_up_after`; the next event
    /// of the webhook went ahead without it.
    Abandoned,
}

impl DeliveryState {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Abandoned => "abandoned",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state name this release does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?}; known: pending, delivered, abandoned")]
pub struct UnknownDeliveryState(pub String);

impl FromStr for DeliveryState {
    type Err = UnknownDeliveryState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDeliveryState(s.to_owned()))
    }
}

/// One event to one webhook URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// `{job_id}:{sequence}`, sent as the `Loraflow-Event-Id` header.
    pub event_id: String,
    pub job_id: JobId,
    pub url: String,
    pub tenant: TenantId,
    pub position: u64,
    pub sequence: u64,
    /// The webhook event type (`step:completed`).
    pub event_type: String,
    /// The JSON body, as sent on every attempt.
    pub body: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event was put in the outbox.
    pub enqueued_at: DateTime<Utc>,
    /// When the next attempt is due (or the current one's claim ends);
    /// `None` while an earlier event of the same URL is still pending, and
    /// once the delivery is over.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status, if the receiver answered.
    pub last_status: Option<u16>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
}

/// One request made for a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DeliveryAttempt {
    pub job_id: JobId,
    pub url: String,
    pub sequence: u64,
    /// From 1.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Why the attempt failed (connection refused, timeout, a non-2xx status
    /// with the start of its body); `None` when it was delivered.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub delivered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_by_name() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>(), Ok(s));
        }
        assert!("sent".parse::<DeliveryState>().is_err());
    }
}
