//! The worker runtime: register, then keep up to `max_concurrent_steps`
//! slots busy, one poll asking for as many steps as slots are free
//! (`PollSteps`; `PollStep` against an older server); run each step with
//! its executor while heartbeating
//! (forwarding progress, and cancel/save/sample signals back); report the
//! outcome, retrying transient failures (completions are idempotent by lease).
//!
//! Executors are kept per (step kind, engine): one worker runs native and
//! kohya training side by side, and each assignment goes to the executor of
//! its job's engine; an executor that declares no engine (validation,
//! sampling, ...) runs its kinds for every engine.
//!
//! Each worker names its process with an instance id made when it is
//! created: registering again after a lost connection keeps its leases,
//! while a new process under the same executor id (a restart) ends the
//! leases its predecessor held, so their steps are retried at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use loraflow_core::catalogue::Engine;
use loraflow_core::executor::{
    Capabilities, Executor, StepAssignment, StepContext, StepHandle, StepOutput,
};
use loraflow_core::ids::{ExecutorId, InstanceId};
use loraflow_core::job::{StepError, StepErrorKind};
use loraflow_core::workflow::StepKind;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::api::{ApiError, WorkerApi};
use super::outcome::OutcomeLimits;
use super::{RemoteArtifacts, TransferClient};
use crate::ArtifactStore;

/// Where a worker's steps read and write their files.
#[derive(Debug, Clone)]
pub enum ArtifactAccess {
    /// The artifact store itself (the worker can reach it: the same disk,
    /// or the same bucket with credentials).
    Store(ArtifactStore),
    /// Through the server's `ArtifactService`: the worker needs only the
    /// server's address and its token.
    Remote(TransferClient),
}

impl From<ArtifactStore> for ArtifactAccess {
    fn from(store: ArtifactStore) -> Self {
        Self::Store(store)
    }
}

impl From<TransferClient> for ArtifactAccess {
    fn from(client: TransferClient) -> Self {
        Self::Remote(client)
    }
}

impl ArtifactAccess {
    fn for_step(&self, step: &StepAssignment) -> Arc<dyn loraflow_core::executor::ArtifactIo> {
        match self {
            Self::Store(s) => Arc::new(s.for_step(&step.job_id, &step.step_id, step.attempt)),
            Self::Remote(c) => Arc::new(RemoteArtifacts::for_step(c.clone(), step)),
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub executor_id: ExecutorId,
    /// Hardware and labels; kinds and engines are added from the executors.
    pub capabilities: Capabilities,
    /// Scratch space; each attempt gets a folder, removed afterwards.
    pub workdir: PathBuf,
    /// Longest wait between retries of an unreachable server.
    pub max_backoff: Duration,
}

/// A set of executors behind one executor id.
pub struct Worker {
    api: Arc<dyn WorkerApi>,
    /// By kind and engine; `None`: any engine.
    executors: BTreeMap<(StepKind, Option<Engine>), Arc<dyn Executor>>,
    artifacts: ArtifactAccess,
    options: WorkerOptions,
    outcome_limits: OutcomeLimits,
    /// Why the server refused the registration for good, once it has.
    refused: std::sync::OnceLock<String>,
    /// This process of the executor: fresh for every worker made.
    instance: InstanceId,
}

/// The server refused this worker's registration for good (a bad token, an
/// executor id the token may not speak for): it will not work for that
/// server. `loraflow worker` exits 3 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server refused to register executor {executor}: {reason}")]
pub struct RegistrationRefused {
    pub executor: ExecutorId,
    pub reason: String,
}

impl Worker {
    /// A worker reaching its server through `api`, its steps' files through
    /// `artifacts` (an [`ArtifactStore`] or a [`TransferClient`]).
    pub fn new(
        api: Arc<dyn WorkerApi>,
        artifacts: impl Into<ArtifactAccess>,
        options: WorkerOptions,
    ) -> Self {
        Self {
            api,
            executors: BTreeMap::new(),
            artifacts: artifacts.into(),
            options,
            outcome_limits: OutcomeLimits::default(),
            refused: std::sync::OnceLock::new(),
            instance: InstanceId::new(uuid::Uuid::now_v7().to_string()),
        }
    }

    /// The instance id this worker registers with.
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance
    }

    /// Bounds on what this worker reports (default: the default
    /// [`Limits`](loraflow_core::limits::Limits)); keep the outcome limit
    /// below the server's message limit.
    pub fn with_outcome_limits(mut self, limits: OutcomeLimits) -> Self {
        self.outcome_limits = limits;
        self
    }

    /// Add an executor for the kinds and engines it declares. Executors of
    /// different engines live side by side; a later one wins only the same
    /// (kind, engine).
    pub fn with(mut self, executor: Arc<dyn Executor>) -> Self {
        let engines = executor.engines();
        for kind in executor.kinds() {
            if engines.is_empty() {
                self.executors.insert((kind, None), executor.clone());
            } else {
                for engine in &engines {
                    self.executors
                        .insert((kind.clone(), Some(*engine)), executor.clone());
                }
            }
        }
        self
    }

    /// Whether any executor was added.
    pub fn is_empty(&self) -> bool {
        self.executors.is_empty()
    }

    /// The executor for `step`: its engine's, else one for any engine.
    fn executor_for(&self, step: &StepAssignment) -> Option<Arc<dyn Executor>> {
        self.executors
            .get(&(step.kind.clone(), Some(step.engine)))
            .or_else(|| self.executors.get(&(step.kind.clone(), None)))
            .cloned()
    }

    /// The capabilities sent on registration: every kind and engine of the
    /// executors, and the base models each says it has installed.
    pub fn capabilities(&self) -> Capabilities {
        let mut caps = self.options.capabilities.clone();
        for ((kind, engine), executor) in &self.executors {
            caps.kinds.insert(kind.clone());
            caps.engines.extend(*engine);
            caps.base_models.extend(executor.base_models());
        }
        caps
    }

    /// Run until `shutdown`. Steps running at shutdown are cancelled and
    /// reported as failed (retryable), so the server retries them elsewhere.
    /// A refused registration ends the run (it is logged); see
    /// [`Worker::serve`] to learn of it.
    pub async fn run(self, shutdown: CancellationToken) {
        let _ = self.serve(shutdown).await;
    }

    /// As [`Worker::run`], and say whether the server refused the
    /// registration (then nothing runs).
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), RegistrationRefused> {
        let caps = self.capabilities();
        let slots = caps.max_concurrent_steps.max(1);
        let this = Arc::new(self);
        this.clone().keep_busy(caps, slots, shutdown).await;
        match this.refused.get() {
            Some(reason) => Err(RegistrationRefused {
                executor: this.options.executor_id.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn register(
        &self,
        caps: &Capabilities,
        shutdown: &CancellationToken,
    ) -> Option<super::api::Registration> {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Another slot was refused already: asking again would only be
            // refused again.
            if self.refused.get().is_some() {
                return None;
            }
            match self
                .api
                .register(&self.options.executor_id, &self.instance, caps)
                .await
            {
                Ok(r) => {
                    info!(executor = %self.options.executor_id, instance = %self.instance, kinds = ?caps.kinds, engines = ?caps.engines, "registered");
                    return Some(r);
                }
                Err(ApiError::Rejected(msg)) => {
                    warn!(executor = %self.options.executor_id, "registration refused: {msg}");
                    let _ = self.refused.set(msg);
                    return None;
                }
                Err(e) => warn!("registration failed, retrying in {backoff:?}: {e}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Keep the free slots asking for work. With an API that leases
    /// several steps per call, one poll at a time asks for as many steps as
    /// slots are free (one round trip leases them all); otherwise each slot
    /// polls for one step, as many polls at once as slots. Each step runs
    /// on a task of its own holding its slot. At shutdown, wait for the
    /// running steps (they are cancelled and reported).
    async fn keep_busy(
        self: Arc<Self>,
        caps: Capabilities,
        slots: u32,
        shutdown: CancellationToken,
    ) {
        let batch = self.api.leases_several();
        let free = Arc::new(tokio::sync::Semaphore::new(slots as usize));
        let registration = Arc::new(tokio::sync::Mutex::new(None));
        let pollers = if batch { 1 } else { slots };
        let mut tasks = Vec::new();
        for _ in 0..pollers {
            let (this, caps, free, registration, shutdown) = (
                self.clone(),
                caps.clone(),
                free.clone(),
                registration.clone(),
                shutdown.clone(),
            );
            tasks.push(tokio::spawn(async move {
                this.poller(caps, free, registration, batch, shutdown).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn poller(
        self: Arc<Self>,
        caps: Capabilities,
        free: Arc<tokio::sync::Semaphore>,
        registration: Arc<tokio::sync::Mutex<Option<super::api::Registration>>>,
        batch: bool,
        shutdown: CancellationToken,
    ) {
        let id = &self.options.executor_id;
        let mut running = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            while running.try_join_next().is_some() {}
            let reg = {
                let mut guard = registration.lock().await;
                if guard.is_none() {
                    *guard = self.register(&caps, &shutdown).await;
                }
                match *guard {
                    Some(r) => r,
                    None => break,
                }
            };
            // One free slot at least; with batches, every one free now.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = free.clone().acquire_owned() => p.expect("the slots are never closed"),
            };
            let mut permits = vec![first];
            while batch && let Ok(p) = free.clone().try_acquire_owned() {
                permits.push(p);
            }
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.api.poll_many(id, permits.len() as u32, reg.poll_timeout) => r,
            };
            match polled {
                Ok(steps) => {
                    backoff = Duration::from_millis(100);
                    for step in steps {
                        // A server that leased more than asked is obeyed:
                        // the steps are leased, and run.
                        let permit = permits.pop();
                        let (this, shutdown) = (self.clone(), shutdown.clone());
                        running.spawn(async move {
                            let _slot = permit;
                            this.run_slot(step, reg.heartbeat_interval, &shutdown).await;
                        });
                    }
                }
                Err(ApiError::UnknownExecutor(_)) => {
                    *registration.lock().await = None;
                }
                Err(_) if shutdown.is_cancelled() => break,
                Err(e) => {
                    warn!("poll failed, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Run `step` on its slot, then each step its report leased for the
    /// slot (one round trip per step while work is queued); the slot is
    /// free again when a report leases nothing.
    async fn run_slot(
        &self,
        step: StepAssignment,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) {
        let mut next = std::collections::VecDeque::from([step]);
        // The directory of the attempt just ended: removed as the next
        // step's is made, in one trip to the blocking pool, or at the end.
        let mut ended = None;
        while let Some(step) = next.pop_front() {
            let span = tracing::info_span!("step", job = %step.job_id, step = %step.step_id, attempt = step.attempt);
            let (leased, dir) = self
                .run_step(step, ended.take(), heartbeat, shutdown)
                .instrument(span)
                .await;
            next.extend(leased);
            ended = dir;
        }
        if let Some(dir) = ended
            && let Err(e) = remove_workdir(dir.clone()).await
        {
            warn!("could not remove {}: {e}", dir.display());
        }
    }

    /// Run one step and report it, in a directory of its own, made after
    /// `ended` (the slot's previous attempt's) is removed. Answers the
    /// steps leased with the report and the directory to remove.
    async fn run_step(
        &self,
        step: StepAssignment,
        ended: Option<PathBuf>,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> (Vec<StepAssignment>, Option<PathBuf>) {
        let id = &self.options.executor_id;
        // One directory per attempt, removed with everything in it once the
        // attempt is reported (as the slot's next step starts, or when the
        // slot goes idle); nothing of a finished step is left behind (nested
        // job and step directories were, one pair per job, and cost a
        // directory inode each to make). `+` is in neither kind of id.
        let workdir = self
            .options
            .workdir
            .join(format!("{}+{}+{}", step.job_id, step.step_id, step.attempt));
        let io = self.artifacts.for_step(&step);
        let (ctx, handle) = StepContext::new(io, workdir.clone(), tracing::Span::current());
        let Some(executor) = self.executor_for(&step) else {
            let err = StepError {
                kind: StepErrorKind::Internal,
                message: format!(
                    "executor {id} has no executor for kind {} with engine {}",
                    step.kind, step.engine
                ),
                retryable: true,
            };
            return (self.report(Err(err), &step, shutdown).await, ended);
        };
        if let Err(e) = make_workdir(ended, workdir.clone()).await {
            let err = StepError {
                kind: StepErrorKind::Unavailable,
                message: format!("cannot create work directory {}: {e}", workdir.display()),
                retryable: true,
            };
            return (self.report(Err(err), &step, shutdown).await, None);
        }
        info!("step started");

        let work = {
            let (step, ctx) = (step.clone(), ctx.clone());
            tokio::spawn(
                async move { executor.run(&step, &ctx).await }.instrument(tracing::Span::current()),
            )
        };
        let mut work = std::pin::pin!(work);
        // The first heartbeat is due one interval after the start, not at once.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A step's first progress and each new epoch are milestones: they
        // go at once rather than at the next beat, so watchers see a step
        // start and each epoch end even when steps are shorter than the
        // heartbeat interval. `sent` is the epoch last sent (`None`: none yet).
        let mut watcher = handle.clone();
        let mut watching = true;
        let mut sent: Option<Option<u32>> = None;
        let milestone =
            |sent: &Option<Option<u32>>| handle.latest().is_some_and(|p| *sent != Some(p.epoch));
        let mut lease_lost = false;
        let result = loop {
            tokio::select! {
                joined = &mut work => {
                    break joined.unwrap_or_else(|e| Err(StepError {
                        kind: StepErrorKind::Internal,
                        message: format!("the executor panicked: {e}"),
                        retryable: true,
                    }));
                }
                _ = shutdown.cancelled(), if !ctx.is_cancelled() => {
                    info!("shutting down: cancelling the running step");
                    handle.cancel();
                }
                changed = watcher.changed(), if watching => {
                    watching = changed;
                    if changed && milestone(&sent) {
                        lease_lost |= self.beat(&step, &ctx, &handle, &mut sent).await;
                        ticker.reset();
                    }
                }
                _ = ticker.tick() => {
                    lease_lost |= self.beat(&step, &ctx, &handle, &mut sent).await;
                }
            }
        };
        // A milestone reported just before a success is recorded before the
        // outcome, so the job's history shows the step's last figures.
        if result.is_ok() && !lease_lost && milestone(&sent) {
            lease_lost = self.beat(&step, &ctx, &handle, &mut sent).await;
        }
        let next = if lease_lost {
            info!("step stopped: its lease is no longer held");
            Vec::new()
        } else {
            self.report(result, &step, shutdown).await
        };
        (next, Some(workdir))
    }

    /// One heartbeat: the latest progress and the outputs made since the
    /// last beat; carries out what the answer asks (stop, save, sample).
    /// True when the lease is lost.
    async fn beat(
        &self,
        step: &StepAssignment,
        ctx: &StepContext,
        handle: &StepHandle,
        sent: &mut Option<Option<u32>>,
    ) -> bool {
        // Outputs made since the last beat travel with this one; a lost beat
        // loses them only until the completion, which reports them again.
        let mut progress = handle.latest();
        let outputs = handle.take_outputs();
        if let Some(p) = &progress {
            *sent = Some(p.epoch);
        }
        if !outputs.is_empty() {
            progress.get_or_insert_with(Default::default).outputs = outputs;
        }
        match self
            .api
            .heartbeat(&self.options.executor_id, step, progress)
            .await
        {
            Ok(reply) => {
                let stop = reply.cancel && !ctx.is_cancelled();
                if stop {
                    info!("the server asked to stop the step");
                    handle.cancel();
                }
                if reply.save_now {
                    handle.request_save();
                }
                if reply.sample_now {
                    handle.request_sample_with(reply.sample.unwrap_or_default());
                }
                stop
            }
            Err(ApiError::LeaseLost { reason, .. }) => {
                warn!("lease lost: {reason}");
                handle.cancel();
                true
            }
            Err(e) => {
                warn!("heartbeat failed: {e}");
                false
            }
        }
    }

    /// Report a step's outcome, retrying while the server is unreachable;
    /// the first attempt asks for the slot's next step (none once shutting
    /// down), and the steps it leased are the answer. An outcome over the
    /// size limit is not sent: the step fails with
    /// [`OutcomeTooLarge`](super::OutcomeTooLarge) (not retryable), as it does when the server
    /// finds the completion too large.
    async fn report(
        &self,
        result: Result<StepOutput, StepError>,
        step: &StepAssignment,
        shutdown: &CancellationToken,
    ) -> Vec<StepAssignment> {
        let id = &self.options.executor_id;
        let mut result = match result {
            Ok(out) => {
                let size = self.api.outcome_size(id, step, &out);
                self.outcome_limits
                    .check(step.step_id.as_str(), step.kind.as_str(), out, size)
                    .map_err(|e| {
                        warn!(
                            bytes = e.bytes,
                            limit = e.limit,
                            "the step's outcome is too large to report; failing the step"
                        );
                        StepError::from(e)
                    })
            }
            Err(e) => Err(e),
        }
        .map_err(|e| self.outcome_limits.bound_error(e));
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..20 {
            // A repeat leases nothing: what a lost answer leased expires.
            let lease_next = u32::from(attempt == 0 && !shutdown.is_cancelled());
            let sent = match &result {
                Ok(out) => {
                    self.api
                        .complete_leasing(id, step, out.clone(), lease_next)
                        .await
                }
                Err(e) => self.api.fail_leasing(id, step, e.clone(), lease_next).await,
            };
            match sent {
                Ok(next) => {
                    match &result {
                        Ok(_) => info!("step completed"),
                        Err(e) => warn!(kind = %e.kind, "step failed: {}", e.message),
                    }
                    return next;
                }
                Err(ApiError::TooLarge(msg)) if result.is_ok() => {
                    warn!("the server refused the outcome as too large: {msg}; failing the step");
                    result = Err(StepError {
                        kind: StepErrorKind::Internal,
                        message: loraflow_core::limits::truncate(
                            &format!(
                                "OUTCOME_TOO_LARGE: the server refused the outcome of step {} ({}) as too large ({msg}). Large results must be written as artifacts and referenced by URI and SHA-256",
                                step.step_id, step.kind
                            ),
                            self.outcome_limits.max_error_chars,
                        ),
                        retryable: false,
                    });
                }
                Err(ApiError::Unavailable(msg)) => {
                    warn!("reporting the outcome failed, retrying in {backoff:?}: {msg}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Err(e) => {
                    warn!("the outcome was refused: {e}");
                    return Vec::new();
                }
            }
        }
        warn!("gave up reporting the outcome; the lease will expire and the step be retried");
        Vec::new()
    }
}

/// Remove `ended` (a finished attempt's directory, with what is in it) and
/// make `dir` with its parents, in one trip to the blocking pool: each
/// trip costs a thread wake-up each way, and in a burst a slot's next step
/// starts as its last ends. Not on the runtime's own threads: a directory
/// made or removed waits for the file system's journal, and on a disk
/// shared with a database that syncs (SQLite) that stalled every task of
/// the worker thread. A directory already gone is no error.
async fn make_workdir(ended: Option<PathBuf>, dir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        if let Some(ended) = ended
            && let Err(e) = remove_dir(&ended)
        {
            warn!("could not remove {}: {e}", ended.display());
        }
        std::fs::create_dir_all(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Remove a finished attempt's directory with what is in it, off the
/// runtime's threads (see [`make_workdir`]).
async fn remove_workdir(dir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || remove_dir(&dir))
        .await
        .map_err(std::io::Error::other)?
}

fn remove_dir(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::{make_workdir, remove_workdir};

    #[tokio::test]
    async fn an_attempt_s_directory_is_made_as_the_last_one_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        // The first attempt: the worker's root is not there yet.
        let first = work.join("j1+train+1");
        make_workdir(None, first.clone()).await.unwrap();
        assert!(first.is_dir());
        // It kept files, in a directory of its own.
        std::fs::create_dir(first.join("cache")).unwrap();
        std::fs::write(first.join("cache").join("model.bin"), b"weights").unwrap();
        // The slot's next attempt: the first goes as the second is made.
        let second = work.join("j1+train+2");
        make_workdir(Some(first.clone()), second.clone())
            .await
            .unwrap();
        assert!(!first.exists());
        assert!(second.is_dir());
        // The slot's last: removed on its own.
        remove_workdir(second.clone()).await.unwrap();
        assert!(!second.exists());
        // One the executor removed itself.
        remove_workdir(second.clone()).await.unwrap();
        make_workdir(Some(second.clone()), work.join("j2+train+1"))
            .await
            .unwrap();
        // A file where the directory should go is an error.
        let blocked = work.join("j3+train+1");
        std::fs::write(&blocked, b"").unwrap();
        assert!(make_workdir(None, blocked).await.is_err());
        let mut left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["j2+train+1", "j3+train+1"]);
    }
}
