//! The scheduler's working set, folded from the global event feed: open jobs,
//! queued steps and live leases. Nothing here is authoritative: it is a cache
//! of the store, rebuilt by replaying the feed after a restart.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::catalogue::{Catalogue, Engine, ModelFamily};
use crate::executor::Capabilities;
use crate::ids::{BaseModelId, ExecutorId, InstanceId, JobId, LeaseId, StepId, TenantId};
use crate::job::JobEvent;
use crate::job::events::StepQueued;
use crate::workflow::{Requirements, StepKind};

/// A step waiting for an executor.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedStep {
    pub job_id: JobId,
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub tenant: TenantId,
    pub priority: i32,
    pub requires: Requirements,
    pub family: Option<ModelFamily>,
    /// The job's engine and base model, for a step that loads the model
    /// (`train`, `sample`): only an executor with it installed gets the step.
    pub model: Option<(Engine, BaseModelId)>,
    pub queued_at: DateTime<Utc>,
    pub not_before: DateTime<Utc>,
    /// Global position of the `StepQueued` event: arrival order.
    pub position: u64,
}

/// A step leased to an executor.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLease {
    pub job_id: JobId,
    pub step_id: StepId,
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
    /// The executor process holding it, when the executor named one.
    pub instance: Option<InstanceId>,
    pub kind: StepKind,
    pub tenant: TenantId,
    pub leased_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub close_by: DateTime<Utc>,
}

impl QueuedStep {
    /// Whether an executor offering `caps` may lease the step at `now`:
    /// past its backoff, and the executor can run it.
    pub fn runnable_by(&self, caps: &Capabilities, now: DateTime<Utc>) -> bool {
        self.not_before <= now
            && caps.satisfies_job(
                &self.kind,
                &self.requires,
                self.family,
                self.model.as_ref().map(|(e, m)| (*e, m)),
            )
    }
}

impl LiveLease {
    /// When the lease expires unless renewed.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.deadline.min(self.close_by)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct OpenJob {
    tenant: TenantId,
    family: Option<ModelFamily>,
    /// (engine, base model) a step that loads the model needs installed;
    /// `None` for a tenant's registered model, which any executor of the
    /// engine fetches.
    model: Option<(Engine, BaseModelId)>,
    schedule_to_start: HashMap<StepId, Duration>,
}

/// A queued step's key: its job and step.
pub(super) type QueueKey = (JobId, StepId);

/// Queued steps of one priority, per tenant in arrival order (by the
/// `StepQueued` event's position).
pub(super) type TenantQueues = HashMap<TenantId, BTreeMap<u64, QueueKey>>;

/// Open jobs, queued steps and live leases.
#[derive(Debug, Clone)]
pub struct SchedulerState {
    catalogue: Arc<Catalogue>,
    jobs: HashMap<JobId, OpenJob>,
    pub(super) queued: BTreeMap<QueueKey, QueuedStep>,
    pub(super) leases: HashMap<LeaseId, LiveLease>,
    /// The queue indexed in serving order less the fairness term: highest
    /// priority first, then per tenant the oldest first. A pick walks the
    /// heads of the tenants' queues instead of the whole queue.
    pub(super) serving: BTreeMap<Reverse<i32>, TenantQueues>,
    /// Live leases per tenant (the fairness measure) and per executor
    /// (what its concurrency limit counts), kept with `leases`.
    pub(super) leases_by_tenant: HashMap<TenantId, u32>,
    leases_by_executor: HashMap<ExecutorId, u32>,
    /// How many queued steps end their backoff (`not_before`) at each
    /// instant, and the queued steps
    /// with a schedule-to-start timeout by when they must have started:
    /// what the timer looks up without a scan of the queue.
    pub(super) backoffs: BTreeMap<DateTime<Utc>, u32>,
    pub(super) start_by: BTreeSet<(DateTime<Utc>, QueueKey)>,
    position: u64,
}

/// Two states are equal when they hold the same jobs, queue, leases and
/// position (the catalogue they were built with is not compared): what a
/// start from the open jobs is checked against a fold of the whole feed by.
impl PartialEq for SchedulerState {
    fn eq(&self, other: &Self) -> bool {
        self.jobs == other.jobs
            && self.queued == other.queued
            && self.leases == other.leases
            && self.position == other.position
    }
}

impl SchedulerState {
    /// The queue entry `e` of `job` makes at `position`, with the job's
    /// model family and (for a step that loads it) its base model.
    pub(super) fn queued_step(&self, job: &JobId, e: &StepQueued, position: u64) -> QueuedStep {
        let open = self.jobs.get(job);
        QueuedStep {
            job_id: job.clone(),
            step_id: e.step_id.clone(),
            kind: e.kind.clone(),
            attempt: e.attempt,
            tenant: e.tenant.clone(),
            priority: e.priority,
            requires: e.requires.clone(),
            family: open.and_then(|j| j.family),
            model: open
                .filter(|_| crate::executor::loads_base_model(&e.kind))
                .and_then(|j| j.model.clone()),
            queued_at: e.queued_at,
            not_before: e.not_before,
            position,
        }
    }

    pub fn new(catalogue: Arc<Catalogue>) -> Self {
        Self {
            catalogue,
            jobs: HashMap::new(),
            queued: BTreeMap::new(),
            leases: HashMap::new(),
            serving: BTreeMap::new(),
            leases_by_tenant: HashMap::new(),
            leases_by_executor: HashMap::new(),
            backoffs: BTreeMap::new(),
            start_by: BTreeSet::new(),
            position: 0,
        }
    }

    fn queue_insert(&mut self, step: QueuedStep) {
        let key = (step.job_id.clone(), step.step_id.clone());
        self.queue_remove(&key);
        self.serving
            .entry(Reverse(step.priority))
            .or_default()
            .entry(step.tenant.clone())
            .or_default()
            .insert(step.position, key.clone());
        *self.backoffs.entry(step.not_before).or_default() += 1;
        if let Some(t) = self.start_by_of(&step) {
            self.start_by.insert((t, key.clone()));
        }
        self.queued.insert(key, step);
    }

    /// When queued `step` must have started by, if its job gives it a
    /// schedule-to-start timeout (a deadline past the calendar: none).
    fn start_by_of(&self, step: &QueuedStep) -> Option<DateTime<Utc>> {
        let limit = self.schedule_to_start(&step.job_id, &step.step_id)?;
        step.queued_at
            .checked_add_signed(chrono::Duration::from_std(limit).ok()?)
    }

    fn queue_remove(&mut self, key: &QueueKey) {
        if let Some(old) = self.queued.remove(key) {
            self.unindex(&old);
        }
    }

    fn unindex(&mut self, step: &QueuedStep) {
        let key = (step.job_id.clone(), step.step_id.clone());
        if let Some(t) = self.start_by_of(step) {
            self.start_by.remove(&(t, key));
        }
        if let Some(n) = self.backoffs.get_mut(&step.not_before) {
            *n -= 1;
            if *n == 0 {
                self.backoffs.remove(&step.not_before);
            }
        }
        let Some(tenants) = self.serving.get_mut(&Reverse(step.priority)) else {
            return;
        };
        if let Some(steps) = tenants.get_mut(&step.tenant) {
            steps.remove(&step.position);
            if steps.is_empty() {
                tenants.remove(&step.tenant);
            }
        }
        if tenants.is_empty() {
            self.serving.remove(&Reverse(step.priority));
        }
    }

    fn lease_insert(&mut self, lease: LiveLease) {
        self.lease_remove(&lease.lease_id);
        *self
            .leases_by_tenant
            .entry(lease.tenant.clone())
            .or_default() += 1;
        *self
            .leases_by_executor
            .entry(lease.executor_id.clone())
            .or_default() += 1;
        self.leases.insert(lease.lease_id.clone(), lease);
    }

    fn lease_remove(&mut self, lease: &LeaseId) {
        if let Some(old) = self.leases.remove(lease) {
            self.uncount(&old);
        }
    }

    fn uncount(&mut self, lease: &LiveLease) {
        fn down<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: &K) {
            if let Some(n) = m.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
        down(&mut self.leases_by_tenant, &lease.tenant);
        down(&mut self.leases_by_executor, &lease.executor_id);
    }

    /// The global position of the last event applied.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn queued(&self) -> impl Iterator<Item = &QueuedStep> {
        self.queued.values()
    }

    pub fn leases(&self) -> impl Iterator<Item = &LiveLease> {
        self.leases.values()
    }

    pub fn lease(&self, lease: &LeaseId) -> Option<&LiveLease> {
        self.leases.get(lease)
    }

    pub fn is_open(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job)
    }

    /// Steps an executor holds now; what its concurrency limit counts.
    pub fn running_on(&self, executor: &ExecutorId) -> u32 {
        self.leases_by_executor.get(executor).copied().unwrap_or(0)
    }

    /// Leases of `executor` held by processes other than `instance`: dead
    /// once that process registers (the executor restarted).
    pub fn leases_of_other_processes<'a>(
        &'a self,
        executor: &'a ExecutorId,
        instance: &'a InstanceId,
    ) -> impl Iterator<Item = &'a LiveLease> + 'a {
        self.leases
            .values()
            .filter(move |l| &l.executor_id == executor && l.instance.as_ref() != Some(instance))
    }

    /// The schedule-to-start timeout of a step, if it has one.
    pub(super) fn schedule_to_start(&self, job: &JobId, step: &StepId) -> Option<Duration> {
        self.jobs.get(job)?.schedule_to_start.get(step).copied()
    }

    /// Open jobs, for diagnostics and figures (memory follows it).
    pub fn open_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The feed was read up to `position`, with the events of jobs that had
    /// ended by then left out (they leave nothing in the state): a start
    /// from the open jobs, which reads only the work in flight.
    pub fn read_up_to(&mut self, position: u64) {
        self.position = self.position.max(position);
    }

    /// Put the feed position back to `position` (a runtime that applied an
    /// event ahead of the feed, which has not read that far yet).
    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    /// Fold one event of `job` at global `position`.
    pub fn apply(&mut self, position: u64, job: &JobId, event: &JobEvent) {
        self.position = self.position.max(position);
        match event {
            JobEvent::JobCreated(e) => {
                let family = match &e.custom_model {
                    Some(m) => Some(m.family),
                    None => self
                        .catalogue
                        .base_model(&e.spec.base_model)
                        .map(|m| m.family),
                };
                self.jobs.insert(
                    job.clone(),
                    OpenJob {
                        tenant: e.spec.tenant.clone(),
                        family,
                        model: e
                            .custom_model
                            .is_none()
                            .then(|| (e.spec.engine, e.spec.base_model.clone())),
                        schedule_to_start: HashMap::new(),
                    },
                );
            }
            JobEvent::JobSubmitted(e) => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.schedule_to_start = e
                        .workflow
                        .steps
                        .iter()
                        .filter_map(|s| Some((s.id.clone(), s.timeouts.schedule_to_start?)))
                        .collect();
                }
            }
            JobEvent::StepQueued(e) => {
                let step = self.queued_step(job, e, position);
                self.queue_insert(step);
            }
            JobEvent::StepLeased(e) => {
                self.queue_remove(&(job.clone(), e.step_id.clone()));
                let tenant = self
                    .jobs
                    .get(job)
                    .map(|j| j.tenant.clone())
                    .unwrap_or_else(|| TenantId::new(""));
                self.lease_insert(LiveLease {
                    job_id: job.clone(),
                    step_id: e.step_id.clone(),
                    lease_id: e.lease_id.clone(),
                    executor_id: e.executor_id.clone(),
                    instance: e.instance.clone(),
                    kind: e.kind.clone(),
                    tenant,
                    leased_at: e.leased_at,
                    deadline: e.deadline,
                    close_by: e.close_by,
                });
            }
            JobEvent::StepProgressed(e) => {
                if let Some(l) = self.leases.get_mut(&e.lease_id) {
                    l.deadline = e.deadline;
                }
            }
            JobEvent::StepCompleted(e) => self.lease_remove(&e.lease_id),
            JobEvent::StepFailed(e) => self.lease_remove(&e.lease_id),
            JobEvent::LeaseExpired(e) => self.lease_remove(&e.lease_id),
            JobEvent::JobPublished(_)
            | JobEvent::JobFailed(_)
            | JobEvent::JobCancelled(_)
            | JobEvent::JobRejected(_) => {
                // The queue first: its deadlines are found through the job.
                let queued: Vec<QueueKey> = self
                    .queued
                    .range((job.clone(), StepId::new(""))..)
                    .take_while(|((j, _), _)| j == job)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &queued {
                    self.queue_remove(key);
                }
                self.jobs.remove(job);
                let leases: Vec<LeaseId> = self
                    .leases
                    .values()
                    .filter(|l| &l.job_id == job)
                    .map(|l| l.lease_id.clone())
                    .collect();
                for lease in &leases {
                    self.lease_remove(lease);
                }
            }
            JobEvent::StepRetried(_) | JobEvent::ReviewRequested(_) | JobEvent::JobApproved(_) => {}
        }
    }
}
