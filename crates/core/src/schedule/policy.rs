//! Scheduling decisions, as pure functions of the state and the time: which
//! queued step an executor gets, and which leases or queued steps are overdue.
//! The runtime carries the decisions out as commands; optimistic concurrency
//! on the job makes a decision taken twice (two replicas) harmless.

use std::cmp::Reverse;
use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::state::{QueuedStep, SchedulerState};
use crate::executor::Capabilities;
use crate::ids::{ExecutorId, JobId, LeaseId, StepId, TenantId};

/// Something overdue that the runtime must record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A lease's heartbeat or start-to-close deadline passed.
    ExpireLease { job_id: JobId, lease_id: LeaseId },
    /// A queued step waited past its schedule-to-start timeout.
    ExpireQueued { job_id: JobId, step_id: StepId },
}

impl SchedulerState {
    /// Leases `tenant` holds: the fairness measure.
    fn running_of(&self, tenant: &TenantId) -> u32 {
        self.leases_by_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Queued steps in the order they will be served, ignoring capabilities:
    /// higher priority first; among equals, the tenant holding the fewest
    /// leases first (so one tenant's hundred jobs cannot starve another's
    /// one); then the oldest.
    pub fn ordered_queue(&self) -> Vec<&QueuedStep> {
        let mut q: Vec<&QueuedStep> = self.queued.values().collect();
        q.sort_by_key(|s| (Reverse(s.priority), self.running_of(&s.tenant), s.position));
        q
    }

    /// Where `job`'s first step stands in [`ordered_queue`](Self::ordered_queue)
    /// (0 is served next), without sorting the queue: one pass counting the
    /// steps served before it. `None` when none of its steps is queued.
    pub fn queue_place(&self, job: &JobId) -> Option<usize> {
        let order = |s: &QueuedStep| (Reverse(s.priority), self.running_of(&s.tenant), s.position);
        // The sort is stable over the map, ordered by (job, step): that
        // order breaks ties.
        let (first, first_key) = self
            .queued
            .range((job.clone(), StepId::new(""))..)
            .take_while(|((j, _), _)| j == job)
            .map(|(k, s)| (order(s), k))
            .min()?;
        Some(
            self.queued
                .iter()
                .filter(|&(k, s)| (order(s), k) < (first, first_key))
                .count(),
        )
    }

    /// The step `executor` should get now, if any: one it can run, past its
    /// backoff, and only while the executor is under its concurrency limit.
    pub fn pick(
        &self,
        executor: &ExecutorId,
        caps: &Capabilities,
        now: DateTime<Utc>,
    ) -> Option<&QueuedStep> {
        self.pick_excluding(executor, caps, now, 0, |_| false)
    }

    /// [`pick`](Self::pick) for a runtime with decisions in flight: `pending`
    /// leases of this executor not yet in the feed count against its limit,
    /// and steps for which `skip` is true (claimed by another poll) are passed over.
    pub fn pick_excluding(
        &self,
        executor: &ExecutorId,
        caps: &Capabilities,
        now: DateTime<Utc>,
        pending: u32,
        skip: impl Fn(&QueuedStep) -> bool,
    ) -> Option<&QueuedStep> {
        self.pick_many(executor, caps, now, pending, 0, 1, skip)
            .into_iter()
            .next()
    }

    /// Whether `executor` may take, with the outcome that ends one of its
    /// leases (`ending` of them end), the step `queued` that the outcome
    /// queues for `job`: it has a slot then, and can run the step now. For
    /// an outcome whose poll found nothing else for the executor: the step
    /// then goes where a poll right after the outcome would send it, a
    /// commit sooner.
    #[allow(clippy::too_many_arguments)]
    pub fn may_follow(
        &self,
        executor: &ExecutorId,
        caps: &Capabilities,
        now: DateTime<Utc>,
        pending: u32,
        ending: u32,
        job: &JobId,
        queued: &crate::job::events::StepQueued,
    ) -> bool {
        self.room(executor, caps, pending, ending) > 0
            && self.is_open(job)
            && self.queued_step(job, queued, 0).runnable_by(caps, now)
    }

    /// The slots `executor` has free with `pending` claims and `ending`
    /// leases ending.
    fn room(&self, executor: &ExecutorId, caps: &Capabilities, pending: u32, ending: u32) -> u32 {
        let held = (self.running_on(executor) + pending).saturating_sub(ending);
        caps.max_concurrent_steps.saturating_sub(held)
    }

    /// Up to `n` steps for `executor` at once (a poll with `n` free slots),
    /// in the order repeated [`pick_excluding`](Self::pick_excluding) calls
    /// would hand them out were each lease recorded in between: every pick
    /// counts against the executor's limit and as a lease of its tenant, so
    /// a batch is as fair between tenants as single polls. `ending` of the
    /// executor's leases in the state are being ended by the call that asks
    /// (a completion that leases the next step) and leave their slots free.
    ///
    /// The queue is indexed by priority, then per tenant by arrival, so a
    /// pick looks only at the first eligible step of each tenant at the
    /// highest priority that has one (steps it passes over: in backoff,
    /// beyond the executor's capabilities, or skipped), never at the whole
    /// queue.
    #[allow(clippy::too_many_arguments)]
    pub fn pick_many(
        &self,
        executor: &ExecutorId,
        caps: &Capabilities,
        now: DateTime<Utc>,
        pending: u32,
        ending: u32,
        n: u32,
        skip: impl Fn(&QueuedStep) -> bool,
    ) -> Vec<&QueuedStep> {
        let room = self.room(executor, caps, pending, ending).min(n) as usize;
        let mut picked = Vec::new();
        if room == 0 {
            return picked;
        }
        let eligible = |s: &QueuedStep| s.runnable_by(caps, now) && !skip(s);
        // This batch's picks per tenant, counted as leases.
        let mut batch: HashMap<&TenantId, u32> = HashMap::new();
        for tenants in self.serving.values() {
            // Each tenant's next eligible step at this priority, and the
            // rest of its queue to go on with once that one is picked.
            let mut heads: Vec<_> = tenants
                .iter()
                .map(|(tenant, steps)| {
                    let mut rest = steps.values().map(|k| &self.queued[k]);
                    let head = rest.find(|s| eligible(s));
                    (tenant, head, rest)
                })
                .collect();
            while picked.len() < room {
                // The serving order of `ordered_queue`: within a priority,
                // the tenant holding the fewest leases, then the oldest.
                let best = heads
                    .iter_mut()
                    .filter_map(|(tenant, head, rest)| {
                        let s = (*head)?;
                        let running =
                            self.running_of(tenant) + batch.get(*tenant).copied().unwrap_or(0);
                        Some(((running, s.position), tenant, head, rest))
                    })
                    .min_by_key(|(order, ..)| *order);
                let Some((_, tenant, head, rest)) = best else {
                    break;
                };
                picked.extend(head.take());
                *batch.entry(*tenant).or_default() += 1;
                *head = rest.find(|s| eligible(s));
            }
            if picked.len() == room {
                break;
            }
        }
        picked
    }

    /// Position (0 = next) of a queued step in the serving order.
    pub fn queue_position(&self, job: &JobId, step: &StepId) -> Option<usize> {
        self.ordered_queue()
            .iter()
            .position(|s| &s.job_id == job && &s.step_id == step)
    }

    /// Everything overdue at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .leases
            .values()
            .filter(|l| l.expires_at() <= now)
            .map(|l| Action::ExpireLease {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id.clone(),
            })
            .collect();
        // Indexed by deadline: only the overdue are looked at.
        actions.extend(self.start_by.iter().take_while(|(t, _)| *t <= now).map(
            |(_, (job, step))| Action::ExpireQueued {
                job_id: job.clone(),
                step_id: step.clone(),
            },
        ));
        actions.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        actions
    }

    /// The next instant at which something becomes due or leasable: the
    /// runtime sleeps until then (or until a new event arrives).
    pub fn next_wakeup(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let leases = self.leases.values().map(|l| l.expires_at());
        let backoff = self
            .backoffs
            .range((std::ops::Bound::Excluded(now), std::ops::Bound::Unbounded))
            .next()
            .map(|(t, _)| *t);
        let queue_timeout = self.start_by.first().map(|(t, _)| *t);
        leases.chain(backoff).chain(queue_timeout).min()
    }
}
