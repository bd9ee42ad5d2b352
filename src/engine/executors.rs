//! The executor API: register, poll for a step, heartbeat, complete, fail.
//! The gRPC `ExecutorService` and the in-process worker both call these.

use std::time::Duration;

use chrono::{DateTime, Utc};
use loraflow_core::executor::{Capabilities, StepAssignment};
use loraflow_core::ids::{ExecutorId, InstanceId, JobId, LeaseId, StepId};
use loraflow_core::job::{
    self, CompleteStep, FailStep, Heartbeat, JobCommand, JobEvent, LeaseStep, StepProgress,
};
use loraflow_executors::worker::{HeartbeatReply, Registration};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Engine, LeaseTrack, system_metadata};
use crate::error::{Error, Result};
use crate::scheduler::StepKey;

/// The deadlines of a fresh lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub deadline: DateTime<Utc>,
    pub close_by: DateTime<Utc>,
    pub heartbeat_timeout: Duration,
}

/// A step leased to the polling executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    pub assignment: StepAssignment,
    pub lease: LeaseInfo,
}

impl Engine {
    /// (Re-)register an executor that names no process; it may then poll.
    /// Its earlier leases are left to expire: without a process id a
    /// restart cannot be told from a reconnect (see
    /// [`register_instance`](Self::register_instance)).
    pub fn register_executor(
        &self,
        id: ExecutorId,
        capabilities: Capabilities,
    ) -> Result<Registration> {
        self.enrol(id, None, capabilities)
    }

    /// Check the capabilities and record the executor in the fleet.
    pub(super) fn enrol(
        &self,
        id: ExecutorId,
        instance: Option<InstanceId>,
        capabilities: Capabilities,
    ) -> Result<Registration> {
        if let Some(problem) = capabilities.problem() {
            let mut v = loraflow_core::validation::Violations::default();
            v.push("capabilities", problem);
            return Err(Error::InvalidArgument(v));
        }
        self.inner
            .fleet
            .register(id, instance, capabilities, self.inner.services.clock.now());
        Ok(Registration {
            heartbeat_interval: self.inner.config.heartbeat_interval,
            poll_timeout: self.inner.config.poll_timeout,
        })
    }

    /// Executors registered with this process.
    pub fn fleet(&self) -> Vec<super::FleetMember> {
        let mut members = self.inner.fleet.members();
        for m in &mut members {
            m.leases = self.inner.scheduler.leases_of(&m.executor_id);
        }
        members
    }

    /// Wait up to `wait` for a step this executor can run, and lease it.
    pub async fn poll_step(&self, executor: &ExecutorId, wait: Duration) -> Result<Option<Polled>> {
        Ok(self.poll_steps(executor, 1, wait).await?.into_iter().next())
    }

    /// Wait up to `wait` for steps this executor can run, and lease up to
    /// `max` of them at once (an executor with `max` free slots; never past
    /// its `max_concurrent_steps`, nor [`MAX_POLL_STEPS`]): as soon as one
    /// or more can be leased, they are, their leases written together
    /// ([`Store::execute_many`]), and the answer carries them all. Empty
    /// when nothing came in time.
    ///
    /// [`Store::execute_many`]: loraflow_store::Store::execute_many
    /// [`MAX_POLL_STEPS`]: loraflow_core::executor::MAX_POLL_STEPS
    pub async fn poll_steps(
        &self,
        executor: &ExecutorId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Polled>> {
        let deadline =
            Instant::now() + wait.min(self.inner.config.poll_timeout.max(Duration::from_millis(1)));
        let scheduler = &self.inner.scheduler;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            let (caps, instance) = self
                .inner
                .fleet
                .touch(executor, self.inner.services.clock.now())
                .ok_or_else(|| Error::UnknownExecutor(executor.clone()))?;
            // Arm the wake-up before looking, so a change in between is not
            // missed: `notify_waiters` wakes only futures already enabled.
            let changed = scheduler.changed();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let keys = scheduler.claim(
                executor,
                &caps,
                max.clamp(1, loraflow_core::executor::MAX_POLL_STEPS),
            );
            if !keys.is_empty() {
                let polled = self.lease(executor, instance, keys).await?;
                if !polled.is_empty() {
                    return Ok(polled);
                }
                // Every step went to someone else: look again at once.
                continue;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = self.inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
            }
        }
    }

    /// Lease the claimed steps, their leases written together. The steps
    /// leased; a step that another poll or replica leased first (or whose
    /// job moved on) is passed over. Another error is the answer when no
    /// step could be leased.
    async fn lease(
        &self,
        executor: &ExecutorId,
        instance: Option<InstanceId>,
        keys: Vec<StepKey>,
    ) -> Result<Vec<Polled>> {
        let (lease_ids, commands) = lease_commands(executor, instance, &keys);
        let written = self
            .inner
            .store
            .execute_many(commands, system_metadata(executor.as_str()))
            .await;
        self.take_leases(keys, lease_ids, written)
    }

    /// The leases of the claimed steps `keys` as written: each step leased,
    /// lost to another poll, or released.
    fn take_leases(
        &self,
        keys: Vec<StepKey>,
        lease_ids: Vec<LeaseId>,
        written: Vec<loraflow_store::Result<loraflow_store::Committed>>,
    ) -> Result<Vec<Polled>> {
        let scheduler = &self.inner.scheduler;
        let mut polled = Vec::with_capacity(keys.len());
        let mut failed = None;
        for ((key, lease_id), w) in keys.into_iter().zip(lease_ids).zip(written) {
            match w.map_err(Error::from) {
                Ok(c) => polled.push(self.leased(c, lease_id)),
                // Another poll or replica leased it first, or the job moved on.
                Err(Error::Domain(_))
                | Err(Error::Store(
                    loraflow_store::Error::Domain(_) | loraflow_store::Error::Conflict { .. },
                )) => scheduler.lost(&key),
                // A tampered job (logged by the store) is dropped from
                // the queue; it must not hold the executor up.
                Err(Error::Store(loraflow_store::Error::TamperedLog(_))) => scheduler.lost(&key),
                Err(e) => {
                    scheduler.release(&key);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if polled.is_empty() => Err(e),
            _ => Ok(polled),
        }
    }

    /// The assignment and deadlines of the lease `lease_id` just written.
    fn leased(&self, c: loraflow_store::Committed, lease_id: LeaseId) -> Polled {
        let leased = c
            .events
            .iter()
            .find_map(|e| match e {
                JobEvent::StepLeased(l) => Some(l.clone()),
                _ => None,
            })
            .expect("a lease command that succeeded wrote StepLeased");
        let assignment = c
            .job
            .assignment(&lease_id, &self.inner.services.catalogue)
            .expect("the lease just written is current");
        let heartbeat_timeout = (leased.deadline - leased.leased_at)
            .to_std()
            .unwrap_or_default();
        self.inner
            .leases
            .lock()
            .expect("lease lock poisoned")
            .insert(
                lease_id,
                LeaseTrack {
                    leased_at: c.position.unwrap_or(0),
                    last_write: Instant::now(),
                    recorded_epoch: None,
                    first: None,
                    latest: None,
                    progress: None,
                },
            );
        Polled {
            assignment,
            lease: LeaseInfo {
                deadline: leased.deadline,
                close_by: leased.close_by,
                heartbeat_timeout,
            },
        }
    }

    /// The lease must be the executor's own; checked against the scheduler's
    /// view when it knows the lease, else left to the job (which refuses
    /// unknown and stale leases).
    fn check_holder(&self, executor: &ExecutorId, lease: &LeaseId) -> Result<()> {
        let holder = self
            .inner
            .scheduler
            .read(|s| s.lease(lease).map(|l| l.executor_id.clone()));
        match holder {
            Some(h) if &h != executor => Err(Error::Domain(job::Error::UnknownLease {
                lease_id: lease.clone(),
            })),
            _ => Ok(()),
        }
    }

    /// Renew a lease and report progress. Progress is recorded at most every
    /// `progress_interval`; the answer tells the executor to stop when the
    /// job was cancelled or the lease is no longer its own.
    pub async fn heartbeat(
        &self,
        executor: &ExecutorId,
        job: &JobId,
        lease: &LeaseId,
        progress: Option<StepProgress>,
    ) -> Result<HeartbeatReply> {
        self.check_holder(executor, lease)?;
        // A busy executor polls seldom: its heartbeats say it is alive.
        self.inner
            .fleet
            .touch(executor, self.inner.services.clock.now());
        let now = Instant::now();
        let step_of = |p: &Option<StepProgress>| p.as_ref().and_then(|p| p.step);
        let (due, progress, leased_at) = {
            let mut leases = self.inner.leases.lock().expect("lease lock poisoned");
            let track = leases.get_mut(lease);
            // Outputs made on request are recorded at once, not throttled
            // away; so are a lease's first progress and each new epoch
            // (a watcher sees the step start and every epoch end; at most
            // one event per epoch, bounded by the job's epochs).
            let has_outputs = progress.as_ref().is_some_and(|p| !p.outputs.is_empty());
            let milestone = progress.as_ref().is_some_and(|p| {
                track
                    .as_ref()
                    .is_some_and(|t| t.recorded_epoch != Some(p.epoch))
            });
            let due = has_outputs
                || milestone
                || track.as_ref().is_none_or(|t| {
                    now.duration_since(t.last_write) >= self.inner.config.progress_interval
                });
            let progress = match track {
                Some(t) => {
                    if let Some(step) = step_of(&progress) {
                        t.first.get_or_insert((now, step));
                        t.latest = Some((now, step));
                    }
                    // A renewal repeats the figures, never the outputs.
                    let outputs = progress.as_ref().map(|p| p.outputs.clone());
                    if let Some(mut p) = progress {
                        p.outputs = Vec::new();
                        t.progress = Some(p);
                    }
                    t.progress.clone().map(|mut p| {
                        p.outputs = outputs.unwrap_or_default();
                        p
                    })
                }
                None => progress,
            };
            let leased_at = leases.get(lease).map(|t| t.leased_at).unwrap_or(u64::MAX);
            (due, progress, leased_at)
        };
        let signals = self.take_signals(job);
        if !due {
            // Between recorded heartbeats the scheduler's state answers: the
            // lease is live unless the state, having read past the lease,
            // no longer has it.
            let live = self
                .inner
                .scheduler
                .read(|s| s.lease(lease).is_some() || s.position() < leased_at);
            return Ok(HeartbeatReply {
                cancel: !live,
                save_now: signals.save_now,
                sample_now: signals.sample_now,
                sample: signals.sample,
                lease_deadline: None,
            });
        }
        let command = JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: progress.unwrap_or_default(),
        });
        match self
            .inner
            .store
            .execute(job, command, system_metadata(executor.as_str()))
            .await
        {
            Ok(c) => {
                if let Some(t) = self
                    .inner
                    .leases
                    .lock()
                    .expect("lease lock poisoned")
                    .get_mut(lease)
                {
                    t.last_write = now;
                    if let Some(p) = &t.progress {
                        t.recorded_epoch = Some(p.epoch);
                    }
                }
                let deadline = c.events.iter().find_map(|e| match e {
                    JobEvent::StepProgressed(p) => Some(p.deadline),
                    _ => None,
                });
                Ok(HeartbeatReply {
                    cancel: false,
                    save_now: signals.save_now,
                    sample_now: signals.sample_now,
                    sample: signals.sample,
                    lease_deadline: deadline,
                })
            }
            Err(loraflow_store::Error::Domain(
                job::Error::IllegalTransition { .. }
                | job::Error::StaleLease { .. }
                | job::Error::UnknownLease { .. },
            )) => {
                self.forget(lease);
                Ok(HeartbeatReply {
                    cancel: true,
                    ..HeartbeatReply::default()
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn take_signals(&self, job: &JobId) -> super::Signals {
        self.inner
            .signals
            .lock()
            .expect("signals lock poisoned")
            .remove(job)
            .unwrap_or_default()
    }

    pub(super) fn forget(&self, lease: &LeaseId) {
        self.inner
            .leases
            .lock()
            .expect("lease lock poisoned")
            .remove(lease);
    }

    /// Estimated time left on a lease with `total` steps, from the pace
    /// measured between its first and latest reports, less the time since
    /// the latest.
    pub(crate) fn eta(&self, lease: &LeaseId, total: u64) -> Option<Duration> {
        let leases = self.inner.leases.lock().expect("lease lock poisoned");
        let t = leases.get(lease)?;
        let ((t0, s0), (t1, s1)) = (t.first?, t.latest?);
        let elapsed = t1.duration_since(t0).as_secs_f64();
        if s1 <= s0 || elapsed <= 0.0 {
            return None;
        }
        let rate = (s1 - s0) as f64 / elapsed;
        // Counted from now, not from the latest report.
        let since = Instant::now().saturating_duration_since(t1).as_secs_f64();
        let left = total.saturating_sub(s1) as f64 / rate - since;
        Some(Duration::from_secs_f64(left.max(0.0)))
    }

    /// Record a step's success. A repeat for the same lease is harmless.
    /// Then lease up to `lease_next` steps to the executor, as a poll with
    /// no wait would (its slot of this lease counted free): the steps
    /// leased, none when the completion is refused.
    pub async fn complete_step(
        &self,
        executor: &ExecutorId,
        job: &JobId,
        command: CompleteStep,
        lease_next: u32,
    ) -> Result<Vec<Polled>> {
        let lease = command.lease_id.clone();
        self.report(
            executor,
            job,
            JobCommand::CompleteStep(command),
            &lease,
            lease_next,
        )
        .await
    }

    /// Record a step's failure; the job decides between retry and failure.
    /// `lease_next` as for [`complete_step`](Self::complete_step).
    pub async fn fail_step(
        &self,
        executor: &ExecutorId,
        job: &JobId,
        command: FailStep,
        lease_next: u32,
    ) -> Result<Vec<Polled>> {
        let lease = command.lease_id.clone();
        self.report(
            executor,
            job,
            JobCommand::FailStep(command),
            &lease,
            lease_next,
        )
        .await
    }

    /// Record the outcome (`CompleteStep` or `FailStep`) of `lease`, and
    /// lease up to `lease_next` steps to the executor. The steps it can
    /// have now are leased with the outcome, written only once it is
    /// (`Store::execute_after`: one commit where the backend allows); when
    /// there are none, or they could not go with it, a poll with no wait
    /// follows the outcome (and finds the step it queued, say).
    async fn report(
        &self,
        executor: &ExecutorId,
        job: &JobId,
        command: JobCommand,
        lease: &LeaseId,
        lease_next: u32,
    ) -> Result<Vec<Polled>> {
        self.check_holder(executor, lease)?;
        // Other slots' outcomes reported meanwhile count this slot as free
        // too (and this one theirs), until this call ends however it ends.
        let _reporting = Reporting::new(&self.inner.scheduler, lease);
        let metadata = system_metadata(executor.as_str());
        let touched = match lease_next {
            0 => None,
            _ => self
                .inner
                .fleet
                .touch(executor, self.inner.services.clock.now()),
        };
        let claimed = touched
            .as_ref()
            .map(|(caps, instance)| {
                let n = lease_next.min(loraflow_core::executor::MAX_POLL_STEPS);
                let keys = self.inner.scheduler.claim(executor, caps, n);
                (instance.clone(), keys)
            })
            .filter(|(_, keys)| !keys.is_empty());
        // The leases written with the outcome, if any were.
        let written = match claimed {
            Some((instance, keys)) => {
                let (lease_ids, commands) = lease_commands(executor, instance, &keys);
                let after = self
                    .inner
                    .store
                    .execute_after((job.clone(), command), commands, metadata)
                    .await;
                if after.then.is_none() {
                    for key in &keys {
                        self.inner.scheduler.release(key);
                    }
                }
                after.first?;
                after
                    .then
                    .map(|written| WithOutcome::Claimed(keys, lease_ids, written))
            }
            // Nothing queued for the executor now: the step the outcome
            // queues, if the executor may run it, is leased in its commit
            // (where the poll after it would lease it, one commit later).
            None => match &touched {
                Some((caps, instance)) => {
                    let next = LeaseId::new(Uuid::now_v7().to_string());
                    let scheduler = &self.inner.scheduler;
                    let follow = |events: &[JobEvent]| {
                        let queued = events.iter().find_map(|e| match e {
                            JobEvent::StepQueued(q)
                                if scheduler.may_follow(executor, caps, job, q) =>
                            {
                                Some(q)
                            }
                            _ => None,
                        });
                        queued
                            .map(|q| lease_command(executor, instance, &q.step_id, &next))
                            .into_iter()
                            .collect()
                    };
                    let c = self
                        .inner
                        .store
                        .execute_following(job, command, follow, metadata)
                        .await?;
                    let followed = c
                        .events
                        .iter()
                        .any(|e| matches!(e, JobEvent::StepLeased(l) if l.lease_id == next));
                    followed.then(|| WithOutcome::Followed(Box::new(c), next))
                }
                None => {
                    self.inner.store.execute(job, command, metadata).await?;
                    None
                }
            },
        };
        self.forget(lease);
        // The outcome is recorded; leasing nothing more only leaves the
        // executor to poll.
        let leased = match written {
            Some(WithOutcome::Claimed(keys, lease_ids, written)) => {
                self.take_leases(keys, lease_ids, written)
            }
            Some(WithOutcome::Followed(c, lease_id)) => Ok(vec![self.leased(*c, lease_id)]),
            None if lease_next == 0 => Ok(Vec::new()),
            None => self.poll_steps(executor, lease_next, Duration::ZERO).await,
        };
        Ok(leased.unwrap_or_else(|e| {
            tracing::debug!(executor = %executor, "no steps leased with the outcome: {e}");
            Vec::new()
        }))
    }
}

/// Steps leased in an outcome's commit: claimed from the queue, or the step
/// the outcome itself queued.
enum WithOutcome {
    Claimed(
        Vec<StepKey>,
        Vec<LeaseId>,
        Vec<loraflow_store::Result<loraflow_store::Committed>>,
    ),
    Followed(Box<loraflow_store::Committed>, LeaseId),
}

/// A lease whose outcome is being reported, registered with the scheduler
/// for as long as the report lasts.
struct Reporting<'a> {
    scheduler: &'a crate::scheduler::Scheduler,
    lease: &'a LeaseId,
}

impl<'a> Reporting<'a> {
    fn new(scheduler: &'a crate::scheduler::Scheduler, lease: &'a LeaseId) -> Self {
        scheduler.reporting(lease);
        Self { scheduler, lease }
    }
}

impl Drop for Reporting<'_> {
    fn drop(&mut self) {
        self.scheduler.reported(self.lease);
    }
}

/// A `LeaseStep` for each claimed step, each with a fresh lease id.
fn lease_commands(
    executor: &ExecutorId,
    instance: Option<InstanceId>,
    keys: &[StepKey],
) -> (Vec<LeaseId>, Vec<(JobId, JobCommand)>) {
    let lease_ids: Vec<LeaseId> = keys
        .iter()
        .map(|_| LeaseId::new(Uuid::now_v7().to_string()))
        .collect();
    let commands = keys
        .iter()
        .zip(&lease_ids)
        .map(|((job, step), lease_id)| {
            (
                job.clone(),
                lease_command(executor, &instance, step, lease_id),
            )
        })
        .collect();
    (lease_ids, commands)
}

/// The `LeaseStep` of `step` to `executor` under `lease_id`.
fn lease_command(
    executor: &ExecutorId,
    instance: &Option<InstanceId>,
    step: &StepId,
    lease_id: &LeaseId,
) -> JobCommand {
    JobCommand::LeaseStep(LeaseStep {
        step_id: step.clone(),
        lease_id: lease_id.clone(),
        executor_id: executor.clone(),
        instance: instance.clone(),
    })
}
