//! Webhooks: callback URLs a job's creator gives, the event types they
//! subscribe to, and what is sent to them.
//!
//! A job's spec lists up to [`MAX_WEBHOOKS`] [`WebhookSpec`]s, each a URL
//! and event filters. Every job event has one webhook event type
//! ([`event_type`], e.g. `step:completed`); a filter is an event type or a
//! wildcard (`step:*`, `workflow:*`, `*`). The store turns each matching event
//! into a [`Delivery`] whose body is a [`WebhookBody`]; the engine's delivery
//! worker sends it and records every [`DeliveryAttempt`].
//!
//! - [`event_types`]: the mapping from job events to webhook event types, and filters.
//! - [`spec`]: `WebhookSpec` and its validation.
//! - [`body`]: the JSON body of a delivery, and event ids.
//! - [`delivery`]: deliveries and attempts, as the delivery log shows them.

pub mod body;
pub mod delivery;
pub mod event_types;
pub mod spec;

pub use body::{WebhookBody, event_id};
pub use delivery::{Delivery, DeliveryAttempt, DeliveryState, UnknownDeliveryState};
pub use event_types::{EVENT_TYPES, WILDCARDS, event_type, filter_matches, is_filter};
pub use spec::{MAX_URL_CHARS, MAX_WEBHOOKS, WebhookSpec};
