//! The outbox of the memory backend: the tables as maps, with the
//! checkpoint under the same lock (the in-memory form of "in the same
//! transaction"). Lost when the store is dropped.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use loraflow_core::ids::JobId;
use loraflow_core::webhook::{DeliveryState, event_id};

use super::fold::{self, Subscription};
use super::{AfterAttempt, AttemptRecord, Delivery, DeliveryAttempt, DeliveryCursor};
use crate::error::Result;
use crate::event::{Position, StoredEvent};

type Key = (JobId, String, u64);

#[derive(Default)]
struct State {
    checkpoint: Position,
    subscriptions: BTreeMap<(JobId, String), Subscription>,
    deliveries: BTreeMap<Key, Delivery>,
    attempts: BTreeMap<(JobId, u64, String, u32), DeliveryAttempt>,
}

impl State {
    fn pending_of(&self, job: &JobId, url: &str) -> impl Iterator<Item = &Delivery> {
        self.deliveries
            .range((job.clone(), url.to_owned(), 0)..=(job.clone(), url.to_owned(), u64::MAX))
            .map(|(_, d)| d)
            .filter(|d| d.state == DeliveryState::Pending)
    }
}

/// A std `Mutex`: it is never held across an await point.
#[derive(Default)]
pub(crate) struct MemoryOutbox {
    state: Mutex<State>,
}

impl MemoryOutbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change below is made whole before the guard drops.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn checkpoint(&self) -> Position {
        self.lock().checkpoint
    }

    pub(crate) fn apply(
        &self,
        from: Position,
        events: &[StoredEvent],
        now: DateTime<Utc>,
    ) -> Result<(Position, usize)> {
        let mut s = self.lock();
        let cp = s.checkpoint;
        if cp < from {
            return Ok((cp, 0));
        }
        let events: Vec<&StoredEvent> = events.iter().filter(|e| e.position > cp).collect();
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok((cp, 0));
        };
        for sub in fold::created(&events) {
            s.subscriptions
                .entry((sub.job_id.clone(), sub.url.clone()))
                .or_insert(sub);
        }
        let subs: Vec<Subscription> = s
            .subscriptions
            .values()
            .filter(|sub| events.iter().any(|e| e.job_id == sub.job_id))
            .cloned()
            .collect();
        let new = fold::deliveries(&events, &subs)?;
        for d in &new {
            let key = (d.job_id.clone(), d.url.clone(), d.sequence);
            if s.deliveries.contains_key(&key) {
                continue;
            }
            let armed = s.pending_of(&d.job_id, &d.url).next().is_none();
            s.deliveries.insert(
                key,
                Delivery {
                    event_id: event_id(&d.job_id, d.sequence),
                    job_id: d.job_id.clone(),
                    url: d.url.clone(),
                    tenant: d.tenant.clone(),
                    position: d.position,
                    sequence: d.sequence,
                    event_type: d.event_type.to_owned(),
                    body: d.body.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    enqueued_at: now,
                    next_attempt_at: armed.then_some(now),
                    delivered_at: None,
                    last_status: None,
                    last_error: None,
                },
            );
        }
        s.checkpoint = last;
        Ok((last, new.len()))
    }

    fn armed(s: &State) -> impl Iterator<Item = &Delivery> {
        s.deliveries
            .values()
            .filter(|d| d.state == DeliveryState::Pending && d.next_attempt_at.is_some())
    }

    pub(crate) fn due(&self, now: DateTime<Utc>, limit: usize) -> Vec<Delivery> {
        let s = self.lock();
        let mut due: Vec<&Delivery> = Self::armed(&s)
            .filter(|d| d.next_attempt_at.is_some_and(|t| t <= now))
            .collect();
        due.sort_by_key(|d| (d.next_attempt_at, d.position));
        due.into_iter().take(limit).cloned().collect()
    }

    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        Self::armed(&self.lock())
            .filter_map(|d| d.next_attempt_at)
            .min()
    }

    pub(crate) fn claim(&self, d: &Delivery, until: DateTime<Utc>) -> bool {
        let mut s = self.lock();
        match s
            .deliveries
            .get_mut(&(d.job_id.clone(), d.url.clone(), d.sequence))
        {
            Some(cur)
                if cur.state == DeliveryState::Pending
                    && cur.next_attempt_at.is_some()
                    && cur.next_attempt_at == d.next_attempt_at =>
            {
                cur.next_attempt_at = Some(until);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn record(&self, d: &Delivery, r: &AttemptRecord) -> bool {
        let mut s = self.lock();
        let key = (d.job_id.clone(), d.url.clone(), d.sequence);
        let Some(cur) = s
            .deliveries
            .get_mut(&key)
            .filter(|c| c.state == DeliveryState::Pending)
        else {
            return false;
        };
        cur.attempts += 1;
        let attempt = cur.attempts;
        cur.last_status = r.status;
        cur.last_error = r.error.clone();
        match r.after {
            AfterAttempt::Delivered => {
                cur.state = DeliveryState::Delivered;
                cur.next_attempt_at = None;
                cur.delivered_at = Some(r.at);
            }
            AfterAttempt::RetryAt(t) => cur.next_attempt_at = Some(t),
            AfterAttempt::Abandon => {
                cur.state = DeliveryState::Abandoned;
                cur.next_attempt_at = None;
            }
        }
        let done = cur.state != DeliveryState::Pending;
        s.attempts.insert(
            (d.job_id.clone(), d.sequence, d.url.clone(), attempt),
            DeliveryAttempt {
                job_id: d.job_id.clone(),
                url: d.url.clone(),
                sequence: d.sequence,
                attempt,
                at: r.at,
                status: r.status,
                error: r.error.clone(),
                duration_ms: r.duration.as_millis() as u64,
                delivered: r.after == AfterAttempt::Delivered,
            },
        );
        if done {
            let next = s
                .pending_of(&d.job_id, &d.url)
                .next()
                .map(|n| (n.job_id.clone(), n.url.clone(), n.sequence));
            if let Some(n) = next.and_then(|k| s.deliveries.get_mut(&k)) {
                n.next_attempt_at = Some(r.at);
            }
        }
        true
    }

    pub(crate) fn deliveries(
        &self,
        job: &JobId,
        after: Option<&DeliveryCursor>,
        limit: usize,
    ) -> Vec<Delivery> {
        let s = self.lock();
        let mut all: Vec<&Delivery> = s
            .deliveries
            .values()
            .filter(|d| &d.job_id == job)
            .filter(|d| {
                after.is_none_or(|c| (d.sequence, d.url.as_str()) > (c.sequence, c.url.as_str()))
            })
            .collect();
        all.sort_by(|a, b| (a.sequence, &a.url).cmp(&(b.sequence, &b.url)));
        all.into_iter().take(limit).cloned().collect()
    }

    pub(crate) fn attempts(
        &self,
        job: &JobId,
        sequences: RangeInclusive<u64>,
    ) -> Vec<DeliveryAttempt> {
        let s = self.lock();
        s.attempts
            .values()
            .filter(|a| &a.job_id == job && sequences.contains(&a.sequence))
            .cloned()
            .collect()
    }
}
