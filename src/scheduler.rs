//! The scheduler runtime. It folds the global feed into the pure
//! [`SchedulerState`] and turns its decisions into commands: a poll leases the
//! step the policy picks; a timer records expiries when deadlines pass.
//!
//! Nothing here is authoritative. After a restart the state is rebuilt from
//! the feed; a decision taken twice (two polls, two replicas) is harmless
//! because the job's optimistic concurrency lets only one lease through.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use loraflow_core::catalogue::Catalogue;
use loraflow_core::clock::Clock;
use loraflow_core::executor::Capabilities;
use loraflow_core::ids::{ExecutorId, JobId, LeaseId, StepId};
use loraflow_core::job::JobEvent;
use loraflow_core::schedule::{Action, SchedulerState, Unservable};
use loraflow_store::{FeedFilter, Store};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::fleet::Fleet;

pub(crate) type StepKey = (JobId, StepId);

/// How long a step that lost a lease race is passed over: long enough for
/// the feed to deliver the winner's lease.
const LOST_FOR: Duration = Duration::from_secs(2);
/// How long an expiry that was just recorded is not tried again.
const EXPIRING_FOR: Duration = Duration::from_secs(2);
/// The timer wakes at least this often, to catch clock jumps.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// The timer looks for due deadlines at most this often when woken by
/// changes of the state.
const RESCAN_EVERY: Duration = Duration::from_millis(10);

struct Inner {
    state: SchedulerState,
    /// Steps a poll is leasing now, by executor.
    claims: HashMap<StepKey, ExecutorId>,
    /// Steps whose lease went to someone else, until the feed shows it.
    lost: HashMap<StepKey, Instant>,
    /// Leases whose outcome their executor is reporting now: each one's
    /// slot is free for the executor's next step, though the state still
    /// holds the lease until the outcome is applied.
    ending: HashSet<LeaseId>,
    expiring: HashMap<Action, Instant>,
    /// The last sequence applied of each open job: a job's events come
    /// from this process' commits and again from the feed, and each is
    /// applied once, in the job's order.
    seen: HashMap<JobId, u64>,
}

pub(crate) struct Scheduler {
    inner: Mutex<Inner>,
    changed: Notify,
    caught_up: watch::Sender<bool>,
    clock: Arc<dyn Clock>,
}

impl Inner {
    /// The executor's steps being leased now (claims) and its leases
    /// ending now: those whose outcome is being reported.
    fn slots_in_motion(&mut self, executor: &ExecutorId) -> (u32, u32) {
        let pending = self.claims.values().filter(|e| *e == executor).count() as u32;
        let Inner { state, ending, .. } = self;
        // A lease whose end the state has applied frees nothing more.
        ending.retain(|l| state.lease(l).is_some());
        let ending = ending
            .iter()
            .filter(|l| state.lease(l).is_some_and(|l| &l.executor_id == executor))
            .count() as u32;
        (pending, ending)
    }

    /// Apply event `sequence` of `job` once: from the feed (`early` false),
    /// which has every event in order, or from a commit of this process
    /// (`early`), taken only when it is the job's next event, and without
    /// moving the state's feed position (the feed may not have delivered
    /// other processes' events below it yet).
    fn apply(&mut self, position: u64, sequence: u64, job: &JobId, event: &JobEvent, early: bool) {
        let seen = self.seen.get(job).copied().unwrap_or(0);
        if early {
            if sequence != seen + 1 {
                return;
            }
            let at = self.state.position();
            self.state.apply(position, job, event);
            self.state.set_position(at);
            self.seen.insert(job.clone(), sequence);
        } else {
            if sequence <= seen {
                // Applied early; the feed has now reached it.
                self.state.read_up_to(position);
            } else {
                self.state.apply(position, job, event);
                self.seen.insert(job.clone(), sequence);
            }
            // Forgotten once the feed, not an early commit, ends the job.
            if event.ends_job() {
                self.seen.remove(job);
            }
            if sequence <= seen {
                return;
            }
        }
        if let JobEvent::StepLeased(e) = event {
            let key = (job.clone(), e.step_id.clone());
            self.claims.remove(&key);
            self.lost.remove(&key);
        }
    }
}

impl Scheduler {
    pub fn new(catalogue: Arc<Catalogue>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state: SchedulerState::new(catalogue),
                claims: HashMap::new(),
                lost: HashMap::new(),
                ending: HashSet::new(),
                expiring: HashMap::new(),
                seen: HashMap::new(),
            }),
            changed: Notify::new(),
            caught_up: watch::channel(false).0,
            clock,
        })
    }

    /// A snapshot read of the state.
    pub fn read<T>(&self, f: impl FnOnce(&SchedulerState) -> T) -> T {
        f(&self.inner.lock().expect("scheduler lock poisoned").state)
    }

    /// Resolves once the jobs in flight at start are loaded.
    pub async fn wait_caught_up(&self) {
        let mut rx = self.caught_up.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Load the jobs in flight, then follow the feed from there until
    /// `shutdown`. The start reads only the events of jobs that have not
    /// ended ([`Feed::in_flight`](loraflow_store::Feed::in_flight)), so it
    /// takes as long as the work in flight, however long the history.
    pub async fn follow(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        let mut commits = store.commits();
        let feed = store.feed();
        let head = loop {
            let start = tokio::select! {
                _ = shutdown.cancelled() => return,
                start = feed.in_flight() => start,
            };
            match start {
                Ok((head, events)) => {
                    {
                        let mut inner = self.inner.lock().expect("scheduler lock poisoned");
                        for e in &events {
                            inner.apply(e.position, e.sequence, &e.job_id, &e.payload, false);
                        }
                        inner.state.read_up_to(head);
                    }
                    debug!(
                        head,
                        events = events.len(),
                        "scheduler loaded the jobs in flight"
                    );
                    break head;
                }
                Err(e) => {
                    warn!("cannot load the jobs in flight; trying again: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(MAX_SLEEP) => {}
                    }
                }
            }
        };
        self.caught_up.send_replace(true);
        self.changed.notify_waiters();
        let mut feed = std::pin::pin!(feed.subscribe(head, FeedFilter::all()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                // This process' commits, as they return: the step a commit
                // queued is offered to polls without waiting for the feed.
                c = commits.recv() => match c {
                    Ok(c) => {
                        {
                            let mut inner = self.inner.lock().expect("scheduler lock poisoned");
                            for (position, sequence, event) in &c.events {
                                inner.apply(*position, *sequence, &c.job_id, event, true);
                            }
                        }
                        self.changed.notify_waiters();
                    }
                    // Missed commits come through the feed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                item = feed.next() => match item {
                    Some(Ok(e)) => {
                        self.inner
                            .lock()
                            .expect("scheduler lock poisoned")
                            .apply(e.position, e.sequence, &e.job_id, &e.payload, false);
                        self.changed.notify_waiters();
                    }
                    Some(Err(e)) => warn!("feed read failed; the subscription retries: {e}"),
                    None => return,
                },
            }
        }
    }

    /// Pick up to `n` steps for `executor` and claim them (see
    /// [`SchedulerState::pick_many`]); empty if nothing fits now. The slot
    /// of every lease of the executor whose outcome is being reported
    /// ([`reporting`](Self::reporting)) is free, though the state has not
    /// applied its end yet, so that each outcome, and outcomes reported at
    /// once, lease the slot's next step.
    pub fn claim(&self, executor: &ExecutorId, caps: &Capabilities, n: u32) -> Vec<StepKey> {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("scheduler lock poisoned");
        let instant = Instant::now();
        inner
            .lost
            .retain(|_, at| instant.duration_since(*at) < LOST_FOR);
        let (pending, ending) = inner.slots_in_motion(executor);
        let keys: Vec<StepKey> = {
            let Inner {
                state,
                claims,
                lost,
                ..
            } = &*inner;
            state
                .pick_many(executor, caps, now, pending, ending, n, |s| {
                    let key = (s.job_id.clone(), s.step_id.clone());
                    claims.contains_key(&key) || lost.contains_key(&key)
                })
                .into_iter()
                .map(|s| (s.job_id.clone(), s.step_id.clone()))
                .collect()
        };
        for key in &keys {
            inner.claims.insert(key.clone(), executor.clone());
        }
        keys
    }

    /// Whether `executor`, reporting an outcome, may lease with it the step
    /// `queued` that the outcome queues for `job` (see
    /// `SchedulerState::may_follow`).
    pub fn may_follow(
        &self,
        executor: &ExecutorId,
        caps: &Capabilities,
        job: &JobId,
        queued: &loraflow_core::job::events::StepQueued,
    ) -> bool {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("scheduler lock poisoned");
        let (pending, ending) = inner.slots_in_motion(executor);
        inner
            .state
            .may_follow(executor, caps, now, pending, ending, job, queued)
    }

    /// The outcome of `lease` is being reported: until
    /// [`reported`](Self::reported), its slot counts as free to every
    /// claim for its executor.
    pub fn reporting(&self, lease: &LeaseId) {
        self.inner
            .lock()
            .expect("scheduler lock poisoned")
            .ending
            .insert(lease.clone());
    }

    /// The outcome of `lease` is written, or could not be.
    pub fn reported(&self, lease: &LeaseId) {
        self.inner
            .lock()
            .expect("scheduler lock poisoned")
            .ending
            .remove(lease);
    }

    /// Someone else leased the step (or it is no longer queued).
    pub fn lost(&self, key: &StepKey) {
        let mut inner = self.inner.lock().expect("scheduler lock poisoned");
        inner.claims.remove(key);
        inner.lost.insert(key.clone(), Instant::now());
    }

    /// The lease could not be written for another reason; release the claim.
    pub fn release(&self, key: &StepKey) {
        self.inner
            .lock()
            .expect("scheduler lock poisoned")
            .claims
            .remove(key);
    }

    /// Resolves once the state has read the feed up to `position`, or
    /// after `timeout` (a scheduler far behind answers with what it has).
    pub async fn wait_for(&self, position: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.read(|s| s.position()) >= position {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Resolves on the next change of the state (or a timer tick).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Overdue actions not tried in the last moments, marked as being tried.
    fn take_due(&self) -> (Vec<Action>, Option<Duration>) {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("scheduler lock poisoned");
        let instant = Instant::now();
        inner
            .expiring
            .retain(|_, at| instant.duration_since(*at) < EXPIRING_FOR);
        let due: Vec<Action> = inner
            .state
            .due(now)
            .into_iter()
            .filter(|a| !inner.expiring.contains_key(a))
            .collect();
        for a in &due {
            inner.expiring.insert(a.clone(), instant);
        }
        let sleep = inner
            .state
            .next_wakeup(now)
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        (due, Some(sleep))
    }

    /// The capabilities of the executors connected now: polled within
    /// `within`, or holding a lease.
    pub fn connected(&self, fleet: &Fleet, within: Duration) -> Vec<Capabilities> {
        let holding: HashSet<ExecutorId> =
            self.read(|s| s.leases().map(|l| l.executor_id.clone()).collect());
        fleet.connected(self.clock.now(), within, |e| holding.contains(e))
    }

    /// What keeps queued step `step` of `job` from ever being leased by
    /// the `connected` executors; `None` when one could run it, or when
    /// the step is not queued.
    pub fn unservable(
        &self,
        job: &JobId,
        step: &StepId,
        connected: &[Capabilities],
    ) -> Option<Unservable> {
        self.read(|s| {
            s.queued()
                .find(|q| &q.job_id == job && &q.step_id == step)?
                .unservable(connected)
        })
    }

    /// Record expiries as deadlines pass, and wake polls when a backoff
    /// ends. A queued step's expiry names what no executor connected to
    /// `fleet` (polled within `connected_within`) offers, if anything.
    pub async fn run_timers(
        self: Arc<Self>,
        store: Store,
        fleet: Arc<Fleet>,
        connected_within: Duration,
        shutdown: CancellationToken,
    ) {
        self.wait_caught_up().await;
        loop {
            let (due, sleep) = self.take_due();
            for action in due {
                let (job, command) = match &action {
                    Action::ExpireLease { job_id, lease_id } => (
                        job_id,
                        loraflow_core::job::JobCommand::ExpireLease(
                            loraflow_core::job::ExpireLease {
                                lease_id: lease_id.clone(),
                            },
                        ),
                    ),
                    Action::ExpireQueued { job_id, step_id } => {
                        let connected = self.connected(&fleet, connected_within);
                        (
                            job_id,
                            loraflow_core::job::JobCommand::ExpireQueuedStep(
                                loraflow_core::job::ExpireQueuedStep {
                                    step_id: step_id.clone(),
                                    unservable: self.unservable(job_id, step_id, &connected),
                                },
                            ),
                        )
                    }
                };
                match store
                    .execute(job, command, crate::engine::system_metadata("scheduler"))
                    .await
                {
                    Ok(_) => debug!(?action, "recorded"),
                    // Another replica, or the step's own completion, got there first.
                    Err(e) => debug!(?action, "not recorded: {e}"),
                }
            }
            // A change of the state may bring a deadline closer: wake on it
            // too (enabled now, so one arriving before the select counts).
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let scanned = Instant::now();
            let wake = scanned + sleep.unwrap_or(MAX_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {
                    // Wake polls: a backoff may have ended.
                    self.changed.notify_waiters();
                }
                _ = notified => {
                    // Each scan walks every queued step and lease: under a
                    // stream of changes, at most one per `RESCAN_EVERY`
                    // (a deadline is then met that much late at worst).
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(wake.min(scanned + RESCAN_EVERY)) => {
                            if Instant::now() >= wake {
                                self.changed.notify_waiters();
                            }
                        }
                    }
                }
            }
        }
    }

    /// Jobs with a step the given executors hold, for the fleet view.
    pub fn leases_of(&self, executor: &ExecutorId) -> Vec<(JobId, StepId)> {
        self.read(|s| {
            s.leases()
                .filter(|l| &l.executor_id == executor)
                .map(|l| (l.job_id.clone(), l.step_id.clone()))
                .collect()
        })
    }
}
