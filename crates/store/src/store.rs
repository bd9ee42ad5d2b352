//! [`Store`]: opening a backend, executing commands against jobs, loading
//! them, and handing out the feed and the views.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{EventUpcaster, PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent};
use loraflow_core::ids::JobId;
use loraflow_core::job::upcast::upcasters;
use loraflow_core::job::{JobCommand, JobEvent, JobServices, TrainingJob};
use postgres_es::PostgresEventRepository;
use serde::Deserialize;
use sqlite_es::SqliteEventRepository;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::memory::{MemoryLog, MemoryViews};
use crate::backend::{Backend, postgres, sqlite};
use crate::chain::GENESIS_HASH;
use crate::error::{Error, Result};
use crate::event::{
    HASH, MAX_JOB_EVENTS, Metadata, PREV_HASH, Position, RECORDED_AT, RESERVED_METADATA, RawEvent,
    StoredEvent, TENANT,
};
use crate::feed::{Feed, FeedFilter};
use crate::keys::Keyring;
use crate::options::StoreOptions;
use crate::projection::{self, VIEWS};
use crate::repo::{ChainRepository, EventRepo};
use crate::retry::retry_safe;
use crate::url::StoreUrl;
use crate::verify::{Depth, verify_job_inner};
use crate::views::Views;
use crate::{migrate, page_token};

/// cqrs-es' event store over the store's repository: events are the only
/// source of truth (its snapshot and aggregate stores are not used, see
/// DESIGN.md), upcast on load.
pub type JobEventStore = PersistedEventStore<ChainRepository, TrainingJob>;

/// A cqrs-es framework for `TrainingJob` on the same repository, for code
/// that wants cqrs-es' own API. [`Store::execute`] is the engine's path: it
/// adds etags, bounded retries, and tells the committed position.
pub type JobCqrs = CqrsFramework<TrainingJob, JobEventStore>;

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The job's sequence after the command: its new etag (unchanged when
    /// the command emitted nothing).
    pub sequence: u64,
    /// The global position of the last event written; `None` when the
    /// command emitted nothing (an idempotent repeat). Give it to
    /// [`Store::wait_for`] to read your own write from the views.
    pub position: Option<Position>,
    /// The events written, in order.
    pub events: Vec<JobEvent>,
    /// The job after the command.
    pub job: TrainingJob,
}

/// What [`Store::append_events`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub sequence: u64,
    pub position: Position,
}

/// A job rebuilt from its events.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub job: TrainingJob,
    /// The sequence of its last event: the job's etag.
    pub sequence: u64,
}

pub(crate) struct Shared {
    pub backend: Backend,
    /// This store's id on the PostgreSQL notification channel.
    pub notify_id: Arc<str>,
    /// Whether another store listens on it (`notify.rs`).
    pub peers: crate::notify::Peers,
    /// The engine's path reads and writes through it directly: one query
    /// to load a job, one transaction to write.
    pub repo: ChainRepository,
    /// SQLite takes one writer at a time, and its busy handler is not a
    /// queue: a writer that waits sleeps and retries, and under a stream of
    /// short commits the projection runner starved for half a second. This
    /// process' writers therefore take turns here, in arrival order
    /// (other processes still meet at the database's lock).
    /// Commits take it in the store's writer task (see [`crate::group`]).
    pub sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
    pub framework: JobCqrs,
    pub services: JobServices,
    pub options: StoreOptions,
    pub upcasters: Vec<Box<dyn EventUpcaster>>,
    /// Bumped after each commit of this process: wakes subscribers and the
    /// projection runner without waiting for their next poll.
    pub commits: watch::Sender<u64>,
    /// The views' checkpoint as this process last saw it move.
    pub views_at: watch::Sender<Position>,
    pub page_key: Vec<u8>,
    pub url: StoreUrl,
    pub outbox: crate::webhooks::Outbox,
    /// The public keys whose signatures this store accepts: the signing
    /// key's and `StoreOptions::trusted_keys`.
    pub keys: Keyring,
    /// The feed position where this store began signing (its first
    /// checkpoint): a job without a head whose unsigned events all lie at or
    /// before it was written before signing, and is still served.
    pub signing_began: std::sync::atomic::AtomicU64,
    /// Per job, the signature of the last head this process wrote or
    /// verified: a load that finds it again skips the Ed25519 check.
    pub known_heads: std::sync::Mutex<HashMap<JobId, String>>,
    /// The memory backend's records (the databases keep theirs in a table).
    pub records: Arc<crate::records::MemoryRecords>,
    /// Jobs this process wrote lately, as they were after its write: the
    /// next command decides on them without reading the job back. The
    /// store's key on (job, sequence) is the check: a job another writer
    /// moved on makes the write conflict, and the command is decided again
    /// on the job as stored. See [`Store::execute`].
    pub jobs: std::sync::Mutex<HashMap<JobId, CachedJob>>,
    /// Ends the PostgreSQL listener when the store goes.
    pub stop: CancellationToken,
    /// Each commit of this process, as it returns (see [`Store::commits`]).
    pub committed: tokio::sync::broadcast::Sender<Arc<CommittedEvents>>,
    /// Tells the PostgreSQL notifier that this process committed.
    pub committed_here: Arc<tokio::sync::Notify>,
    /// The largest position this process has committed: the feed's tail
    /// that has read up to it has nothing of this process' left to find.
    pub last_committed: std::sync::atomic::AtomicU64,
    /// The recent feed, read once for every follower in this process.
    pub tail: crate::feed::Tail,
    /// Whether this process runs a views runner (`Store::start_projections`).
    pub views_here: std::sync::atomic::AtomicBool,
    /// The statuses this process' views runner last wrote.
    pub views_written: std::sync::Mutex<crate::projection::Written>,
}

/// One commit of this process, handed to in-process readers as it returns,
/// before the feed can serve it. On PostgreSQL, commits of other processes
/// with lower positions may not be readable yet: these are a head start on
/// the feed, never a substitute for it.
#[derive(Debug, Clone)]
pub struct CommittedEvents {
    pub job_id: JobId,
    /// (global position, job sequence, event), in sequence order.
    pub events: Vec<(Position, u64, JobEvent)>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A job as this process last wrote it: state, sequence, and the link of
/// its last event (the next event's `prev_hash`).
#[derive(Clone)]
pub(crate) struct CachedJob {
    job: TrainingJob,
    sequence: u64,
    link: String,
}

impl CachedJob {
    /// No job at all: what a create is first decided on, without reading
    /// (an id in use makes its write at sequence 1 conflict).
    fn none() -> Self {
        Self {
            job: TrainingJob::default(),
            sequence: 0,
            link: GENESIS_HASH.to_owned(),
        }
    }

    /// As [`Store::fold`] gives a job: state, sequence, link.
    pub(crate) fn into_loaded(self) -> (TrainingJob, u64, String) {
        (self.job, self.sequence, self.link)
    }
}

/// A command's events, decided and serialized, not yet written.
pub(crate) struct Decided {
    pub(crate) job_id: JobId,
    /// The job after the events (deciding applied them, see `decide_on`).
    job: TrainingJob,
    /// Its sequence before the events.
    sequence: u64,
    events: Vec<JobEvent>,
    pub(crate) serialized: Vec<SerializedEvent>,
}

/// What deciding a command came to.
pub(crate) enum Decision {
    /// Nothing to write (an idempotent repeat): the answer.
    Nothing(Committed),
    Write(Decided),
}

/// Entries of `Shared::jobs` before it is cleared: jobs in flight at once,
/// with room to spare.
const CACHED_JOBS: usize = 4096;

/// Entries of `Shared::known_heads` before it is cleared.
const KNOWN_HEADS: usize = 100_000;

impl Shared {
    fn known_head(&self, job: &JobId) -> Option<String> {
        self.known_heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .cloned()
    }

    fn remember_head(&self, job: &JobId, sig: String) {
        let mut heads = self.known_heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= KNOWN_HEADS {
            heads.clear();
        }
        heads.insert(job.clone(), sig);
    }
}

impl Shared {
    /// Tell in-process readers of a commit whose last event is at `last`
    /// (sequence `last_sequence`). One commit's events are consecutive in
    /// the feed on every backend (SQLite and memory number them one by one
    /// under the write lock; PostgreSQL's position is the transaction id
    /// shifted, or'ed with the sequence), so each one's position follows.
    fn announce(&self, job_id: &JobId, last: Position, last_sequence: u64, events: &[JobEvent]) {
        self.last_committed
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        if self.committed.receiver_count() == 0 {
            return;
        }
        let first_sequence = last_sequence + 1 - events.len() as u64;
        let events = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let sequence = first_sequence + i as u64;
                (last - (last_sequence - sequence), sequence, e.clone())
            })
            .collect();
        let _ = self.committed.send(Arc::new(CommittedEvents {
            job_id: job_id.clone(),
            events,
        }));
    }

    pub(crate) fn cached_job(&self, job: &JobId) -> Option<CachedJob> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .cloned()
    }

    pub(crate) fn cache_job(&self, job_id: &JobId, cached: Option<CachedJob>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match cached {
            // A job that ended takes no more commands.
            Some(c) if !c.job.is_terminal() => {
                if jobs.len() >= CACHED_JOBS && !jobs.contains_key(job_id) {
                    jobs.clear();
                }
                jobs.insert(job_id.clone(), c);
            }
            _ => {
                jobs.remove(job_id);
            }
        }
    }
}

impl Shared {
    /// Wake the feed's readers in this process and the PostgreSQL notifier
    /// after one or more commits.
    pub(crate) fn committed_now(&self) {
        self.committed_here.notify_one();
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// This process' turn to write, on SQLite (see `sqlite_writer`).
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    pub(crate) async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<Vec<StoredEvent>> {
        self.backend
            .read_events(after, limit, filter)
            .await?
            .iter()
            .map(|raw| raw.to_stored(&self.upcasters))
            .collect()
    }
}

/// The event store of loraflow: one per process, cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.shared.url.backend_name())
            .finish_non_exhaustive()
    }
}

/// `events` as cqrs-es serialises them for the repository, after
/// `sequence`, each with `metadata`.
fn serialize(
    job_id: &JobId,
    sequence: u64,
    events: &[JobEvent],
    metadata: HashMap<String, String>,
) -> Result<Vec<SerializedEvent>> {
    let metadata = serde_json::Value::Object(
        metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    );
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(SerializedEvent::new(
                job_id.to_string(),
                sequence as usize + 1 + i,
                <TrainingJob as Aggregate>::TYPE.to_owned(),
                e.event_type(),
                e.event_version(),
                serde_json::to_value(e)?,
                metadata.clone(),
            ))
        })
        .collect()
}

/// Decide `command` on `job` and apply its events to it: the events.
/// A refusal leaves the job as it was.
fn decide_on(
    job: &mut TrainingJob,
    command: JobCommand,
    services: &JobServices,
) -> Result<Vec<JobEvent>> {
    let events = job.decide(command, services)?;
    for e in &events {
        job.apply(e.clone());
    }
    Ok(events)
}

/// Caller metadata with the store's own keys removed.
pub(crate) fn caller_metadata(metadata: Metadata) -> HashMap<String, String> {
    metadata
        .into_iter()
        .filter(|(k, _)| !RESERVED_METADATA.contains(&k.as_str()))
        .collect()
}

impl Store {
    /// Open the store at `url` with default options (see [`crate::url`] for
    /// the forms), creating or migrating its tables.
    pub async fn open(url: &str, services: JobServices) -> Result<Self> {
        Self::open_with(url, services, StoreOptions::default()).await
    }

    pub async fn open_with(
        url: &str,
        services: JobServices,
        options: StoreOptions,
    ) -> Result<Self> {
        Self::open_inner(url, services, options, false).await
    }

    /// Open an existing store to audit it: a SQLite file that is not there
    /// or a PostgreSQL schema without events is [`Error::Missing`], and
    /// nothing is created (no database, no key file, no checkpoint).
    /// Without `options.audit_key`, a SQLite store's key file is read if it
    /// is there; only its public key is used.
    pub async fn open_existing(
        url: &str,
        services: JobServices,
        options: StoreOptions,
    ) -> Result<Self> {
        let parsed: StoreUrl = url.parse()?;
        let missing = |reason: String| Error::Missing {
            url: url.to_owned(),
            reason,
        };
        match &parsed {
            StoreUrl::Sqlite { path } => {
                if !path.is_file() {
                    return Err(missing(format!("no file {}", path.display())));
                }
                if !sqlite::events_table_exists(path).await? {
                    return Err(missing(format!("{} holds no events table", path.display())));
                }
            }
            StoreUrl::Postgres { url: pg } => {
                if !postgres::events_table_exists(pg, options.postgres_schema.as_deref()).await? {
                    return Err(missing(match &options.postgres_schema {
                        Some(schema) => format!("no table {schema}.events"),
                        None => "no events table in the default schema".into(),
                    }));
                }
            }
            StoreUrl::SqliteMemory | StoreUrl::Memory => {
                return Err(missing(
                    "a memory store only lives inside its process".into(),
                ));
            }
        }
        Self::open_inner(url, services, options, true).await
    }

    async fn open_inner(
        url: &str,
        services: JobServices,
        options: StoreOptions,
        audit_only: bool,
    ) -> Result<Self> {
        let parsed: StoreUrl = url.parse()?;
        let key = crate::audit_log::signing_key(&parsed, &options, audit_only)?;
        let mut keys = Keyring::new(options.trusted_keys.iter().copied());
        keys.add(key.public_key());
        let notify_id: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let (backend, repo) = match &parsed {
            StoreUrl::Sqlite { path } => {
                let pool = sqlite::connect(Some(path), &options).await?;
                migrate::sqlite(&pool, sqlite::MIGRATIONS).await?;
                (
                    Backend::Sqlite(pool.clone()),
                    EventRepo::Sqlite(SqliteEventRepository::new(pool.clone()), pool),
                )
            }
            StoreUrl::SqliteMemory => {
                let pool = sqlite::connect(None, &options).await?;
                migrate::sqlite(&pool, sqlite::MIGRATIONS).await?;
                (
                    Backend::Sqlite(pool.clone()),
                    EventRepo::Sqlite(SqliteEventRepository::new(pool.clone()), pool),
                )
            }
            StoreUrl::Postgres { url } => {
                let postgres::Pools {
                    main: pool,
                    checked,
                } = postgres::connect(url, &options).await?;
                migrate::postgres(&pool, postgres::MIGRATIONS).await?;
                (
                    Backend::Postgres(pool.clone()),
                    EventRepo::Postgres(PostgresEventRepository::new(checked), pool),
                )
            }
            StoreUrl::Memory => {
                let log = Arc::new(MemoryLog::default());
                (
                    Backend::Memory(log.clone(), Arc::new(MemoryViews::default())),
                    EventRepo::Memory(log),
                )
            }
        };
        let sqlite_writer =
            matches!(backend, Backend::Sqlite(_)).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let turn = sqlite_writer.clone().unwrap_or_default();
        let repo = ChainRepository::new(Arc::new(repo), turn, services.clock.clone(), key);
        let framework = CqrsFramework::new(
            PersistedEventStore::new_event_store(repo.clone()).with_upcasters(upcasters()),
            vec![],
            services.clone(),
        );
        let page_key = options
            .page_token_key
            .clone()
            .unwrap_or_else(|| page_token::DEFAULT_KEY.to_vec());
        let views_at = backend.checkpoint(VIEWS).await?;
        let outbox = crate::webhooks::Outbox::new(&backend);
        let signing_began = match backend.audit_checkpoints().await?.first() {
            Some(c) => c.position,
            None if audit_only => 0,
            None => {
                // Every event stored so far was written before signing: the
                // first checkpoint must cover them all, so it waits until the
                // feed shows the last of them.
                crate::audit_log::feed_reaches(
                    &backend,
                    backend.written().await?,
                    options.acquire_timeout,
                )
                .await?;
                let c = crate::audit_log::sign_checkpoint(&backend, repo.key(), None).await?;
                c.position
            }
        };
        let shared = Arc::new(Shared {
            sqlite_writer,
            backend,
            repo,
            framework,
            services,
            options,
            upcasters: upcasters(),
            commits: watch::Sender::new(0),
            views_at: watch::Sender::new(views_at),
            page_key,
            url: parsed,
            outbox,
            keys,
            signing_began: signing_began.into(),
            known_heads: Default::default(),
            tail: Default::default(),
            views_here: Default::default(),
            views_written: Default::default(),
            records: Default::default(),
            jobs: Default::default(),
            stop: CancellationToken::new(),
            committed: tokio::sync::broadcast::Sender::new(1024),
            committed_here: Default::default(),
            last_committed: Default::default(),
            notify_id,
            peers: Default::default(),
        });
        if matches!(shared.url, StoreUrl::Sqlite { .. }) {
            sqlite::checkpoint_wal(Arc::downgrade(&shared));
        }
        if let (Backend::Postgres(pool), false) = (&shared.backend, audit_only) {
            let (id, peers) = (shared.notify_id.clone(), shared.peers.clone());
            crate::notify::listen(
                pool.clone(),
                Arc::downgrade(&shared),
                id.clone(),
                peers.clone(),
            );
            crate::notify::send(pool.clone(), Arc::downgrade(&shared), id, peers);
        }
        Ok(Self { shared })
    }

    /// `sqlite`, `postgres` or `memory`.
    pub fn backend_name(&self) -> &'static str {
        self.shared.url.backend_name()
    }

    /// How long this process's commits take (`/metrics`): a handle on the
    /// store's own histogram, which keeps counting.
    pub fn commit_latency(&self) -> prometheus::Histogram {
        self.shared.repo.commit_seconds()
    }

    /// How many commits each of this process's write transactions held
    /// (`/metrics`; see the group commit in `Store::execute`): a handle on
    /// the store's own histogram, which keeps counting.
    pub fn commits_per_transaction(&self) -> prometheus::Histogram {
        self.shared.repo.group().sizes()
    }

    pub fn services(&self) -> &JobServices {
        &self.shared.services
    }

    /// cqrs-es' framework on this store's repository (no retries, no etags,
    /// no positions; the store's metadata and hash chain are still written).
    pub fn framework(&self) -> &JobCqrs {
        &self.shared.framework
    }

    /// The commits of this process, each as it returns: a head start on
    /// the feed for in-process readers (see [`CommittedEvents`]). A receiver
    /// that falls more than 1,024 commits behind misses some; the feed has
    /// them all.
    pub fn commits(&self) -> tokio::sync::broadcast::Receiver<Arc<CommittedEvents>> {
        self.shared.committed.subscribe()
    }

    pub fn feed(&self) -> Feed {
        Feed {
            shared: self.shared.clone(),
        }
    }

    pub fn views(&self) -> Views {
        Views {
            shared: self.shared.clone(),
        }
    }

    /// Named records beside the events (registered base models, upload
    /// sessions): see [`crate::records`].
    pub fn records(&self) -> crate::records::Records {
        crate::records::Records {
            backend: self.shared.backend.clone(),
            memory: self.shared.records.clone(),
        }
    }

    /// The webhook outbox and delivery log.
    pub fn webhooks(&self) -> crate::webhooks::Webhooks {
        crate::webhooks::Webhooks {
            shared: self.shared.clone(),
        }
    }

    /// Run `command` against the job. A conflict with another writer is
    /// retried (reload, decide again) up to `StoreOptions::max_attempts` times
    /// when the command is safe to retry (see [`crate::retry`]); otherwise it
    /// is returned as [`Error::Conflict`]. A refusal is [`Error::Domain`] and
    /// writes nothing; a command that emits nothing returns the unchanged
    /// sequence and no position.
    pub async fn execute(
        &self,
        job_id: &JobId,
        command: JobCommand,
        metadata: Metadata,
    ) -> Result<Committed> {
        let attempts = if retry_safe(&command) {
            self.shared.options.max_attempts.max(1)
        } else {
            1
        };
        let metadata = caller_metadata(metadata);
        for attempt in 1..=attempts {
            match self
                .try_execute(job_id, None, command.clone(), metadata.clone())
                .await
            {
                Err(Error::Conflict { .. }) if attempt < attempts => {
                    // A little jitter so that retrying writers spread out.
                    let ms = rand::random_range(0..=(1u64 << attempt.min(5)));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(Error::Conflict { .. }) => {
                    return Err(Error::Conflict {
                        job_id: job_id.clone(),
                        attempts: attempt,
                    });
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Like [`execute`](Self::execute), but only if the job is at
    /// `expected_sequence` (its etag); otherwise [`Error::StaleEtag`] and
    /// nothing is written. Never retried. A job that does not exist is at
    /// sequence 0.
    pub async fn execute_expecting(
        &self,
        job_id: &JobId,
        expected_sequence: u64,
        command: JobCommand,
        metadata: Metadata,
    ) -> Result<Committed> {
        self.try_execute(
            job_id,
            Some(expected_sequence),
            command,
            caller_metadata(metadata),
        )
        .await
        .map_err(|e| match e {
            Error::Conflict { .. } => Error::Conflict {
                job_id: job_id.clone(),
                attempts: 1,
            },
            e => e,
        })
    }

    /// One attempt. A command the store may retry (see [`crate::retry`])
    /// and a `Submit` (which follows its job's `Create` in `create_job`)
    /// are first decided on the job as this process last wrote it, when it
    /// has it (a `Create` on no job), and that answer is kept only if it wrote events (the store's
    /// key on the sequence proved the state current); a refusal, a repeat
    /// that writes nothing or a conflict is decided again on the job as
    /// stored, so no answer rests on a state that may be old. Other
    /// commands, and those with an etag, always read the job.
    ///
    /// The cached state was verified (chain and head) when it was read;
    /// a log edited in the database afterwards is caught by the next read
    /// and by every audit.
    async fn try_execute(
        &self,
        job_id: &JobId,
        expected: Option<u64>,
        command: JobCommand,
        metadata: HashMap<String, String>,
    ) -> Result<Committed> {
        let on_copy = retry_safe(&command) || matches!(command, JobCommand::Submit(_));
        let cached = if expected.is_none() && on_copy {
            self.shared.cached_job(job_id)
        } else {
            None
        };
        // A create is first decided on no job at all, without reading: an
        // id in use makes its write at sequence 1 conflict, and it is
        // decided again on the job as stored (which refuses it).
        let cached = cached.or_else(|| {
            (expected.is_none() && matches!(command, JobCommand::Create(_))).then(CachedJob::none)
        });
        if let Some(c) = cached {
            match self
                .decide_and_write(
                    job_id,
                    expected,
                    command.clone(),
                    metadata.clone(),
                    (c.job, c.sequence, c.link),
                )
                .await
            {
                Ok(done) if done.position.is_some() => return Ok(done),
                _ => self.shared.cache_job(job_id, None),
            }
        }
        let loaded = self.fold(job_id).await?;
        self.decide_and_write(job_id, expected, command, metadata, loaded)
            .await
    }

    async fn decide_and_write(
        &self,
        job_id: &JobId,
        expected: Option<u64>,
        command: JobCommand,
        metadata: HashMap<String, String>,
        loaded: (TrainingJob, u64, String),
    ) -> Result<Committed> {
        let decision = self.decide(job_id, expected, command, metadata, loaded)?;
        self.write(job_id, decision).await
    }

    /// Run several commands on one job as one: each decided on the job as
    /// the ones before it leave it, and all their events written in one
    /// commit, or nothing at all when one of them is refused. The answer
    /// is the last command's. Never retried. `create_job` creates and
    /// submits a job this way (one commit, one signature, and no job left
    /// `Pending` by a crash in between). A list that starts with a `Create`
    /// is decided on no job first, as [`execute`](Self::execute) decides a
    /// create.
    pub async fn execute_all(
        &self,
        job_id: &JobId,
        commands: Vec<JobCommand>,
        metadata: Metadata,
    ) -> Result<Committed> {
        let metadata = caller_metadata(metadata);
        if matches!(commands.first(), Some(JobCommand::Create(_))) {
            let none = CachedJob::none().into_loaded();
            if let Ok(d @ Decision::Write(_)) =
                self.decide_all(job_id, commands.clone(), metadata.clone(), none)
                && let Ok(done) = self.write(job_id, d).await
            {
                return Ok(done);
            }
        }
        let loaded = self.fold(job_id).await?;
        let decision = self.decide_all(job_id, commands, metadata, loaded)?;
        self.write(job_id, decision)
            .await
            .map_err(|e| self.conflict_for(job_id, e))
    }

    /// Run `command` and, in the same commit, the commands `follow` makes
    /// of its events, each decided on the job as the ones before leave it
    /// (a follow-up refused is left out). Decided on the job as this
    /// process last wrote it when it has it, else as stored; when the
    /// command writes nothing, or the commit cannot be written (a
    /// conflict, say), the command runs alone as [`execute`](Self::execute)
    /// runs it and nothing follows. A completion and the lease of the step
    /// it queues go so, for the executor that completed it.
    pub async fn execute_following(
        &self,
        job_id: &JobId,
        command: JobCommand,
        follow: impl FnOnce(&[JobEvent]) -> Vec<JobCommand>,
        metadata: Metadata,
    ) -> Result<Committed> {
        let s = &self.shared;
        let caller = caller_metadata(metadata.clone());
        let loaded = match s.cached_job(job_id) {
            Some(c) => Ok(c.into_loaded()),
            None => self.fold(job_id).await,
        };
        if let Ok((mut after, sequence, link)) = loaded
            && let Ok(events) = decide_on(&mut after, command.clone(), &s.services)
            && !events.is_empty()
        {
            let follow_ups = follow(&events);
            let mut all = events;
            for c in follow_ups {
                if let Ok(more) = decide_on(&mut after, c, &s.services) {
                    all.extend(more);
                }
            }
            if let Ok(d @ Decision::Write(_)) =
                self.to_write(job_id, all, caller, (after, sequence, link))
            {
                match self.write(job_id, d).await {
                    Ok(done) => return Ok(done),
                    Err(_) => s.cache_job(job_id, None),
                }
            }
        }
        self.execute(job_id, command, metadata).await
    }

    /// Decide `commands` in turn, each on the job the ones before leave.
    fn decide_all(
        &self,
        job_id: &JobId,
        commands: Vec<JobCommand>,
        metadata: HashMap<String, String>,
        (job, sequence, prev_hash): (TrainingJob, u64, String),
    ) -> Result<Decision> {
        let s = &self.shared;
        let mut after = job;
        let mut events = Vec::new();
        for command in commands {
            events.extend(decide_on(&mut after, command, &s.services)?);
        }
        self.to_write(job_id, events, metadata, (after, sequence, prev_hash))
    }

    /// Write a decision (nothing for [`Decision::Nothing`]).
    async fn write(&self, job_id: &JobId, decision: Decision) -> Result<Committed> {
        let s = &self.shared;
        let decided = match decision {
            Decision::Nothing(c) => return Ok(c),
            Decision::Write(d) => d,
        };
        let (position, head) = s
            .repo
            .commit::<TrainingJob>(&decided.serialized)
            .await
            .map_err(|e| self.conflict_for(job_id, e.into()))?;
        let c = self.written(decided, position, head);
        s.committed_now();
        Ok(c)
    }

    /// Decide `command` on the job as loaded (state, sequence, link): the
    /// events to write, serialized with the store's metadata, or the answer
    /// when there is nothing to write.
    pub(crate) fn decide(
        &self,
        job_id: &JobId,
        expected: Option<u64>,
        command: JobCommand,
        metadata: HashMap<String, String>,
        (mut job, sequence, prev_hash): (TrainingJob, u64, String),
    ) -> Result<Decision> {
        let s = &self.shared;
        if let Some(expected) = expected
            && expected != sequence
        {
            return Err(Error::StaleEtag {
                job_id: job_id.clone(),
                expected,
                actual: sequence,
            });
        }
        let events = decide_on(&mut job, command, &s.services)?;
        self.to_write(job_id, events, metadata, (job, sequence, prev_hash))
    }

    /// `events` decided on the job as loaded, serialized with the store's
    /// metadata; or the answer when there are none. The job given is the
    /// one after the events (as `decide_on` leaves it); the sequence and
    /// link are the loaded ones.
    fn to_write(
        &self,
        job_id: &JobId,
        events: Vec<JobEvent>,
        mut metadata: HashMap<String, String>,
        (job, sequence, prev_hash): (TrainingJob, u64, String),
    ) -> Result<Decision> {
        let s = &self.shared;
        if events.is_empty() {
            return Ok(Decision::Nothing(Committed {
                sequence,
                position: None,
                events,
                job,
            }));
        }
        if sequence + events.len() as u64 > MAX_JOB_EVENTS {
            return Err(Error::HistoryFull {
                job_id: job_id.clone(),
                limit: MAX_JOB_EVENTS,
            });
        }
        // The job after the events: a create's spec is already in it.
        if let Some(spec) = job.spec() {
            metadata.insert(TENANT.into(), spec.tenant.to_string());
        }
        metadata.insert(
            RECORDED_AT.into(),
            s.services
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        metadata.insert(PREV_HASH.into(), prev_hash);
        let serialized = serialize(job_id, sequence, &events, metadata)?;
        Ok(Decision::Write(Decided {
            job_id: job_id.clone(),
            job,
            sequence,
            events,
            serialized,
        }))
    }

    /// What follows a decision's commit at `position` with `head`: the job
    /// kept for the next command, its head remembered, in-process readers
    /// told. The caller then calls `Shared::committed_now` once for
    /// however many commits it wrote.
    pub(crate) fn written(&self, d: Decided, position: Position, head: crate::Head) -> Committed {
        let s = &self.shared;
        let Decided {
            job_id,
            job,
            sequence,
            events,
            ..
        } = d;
        let last = sequence + events.len() as u64;
        s.cache_job(
            &job_id,
            Some(CachedJob {
                job: job.clone(),
                sequence: last,
                link: head.link.clone(),
            }),
        );
        s.remember_head(&job_id, head.sig);
        s.announce(&job_id, position, last, &events);
        Committed {
            sequence: last,
            position: Some(position),
            events,
            job,
        }
    }

    pub(crate) fn conflict_for(&self, job_id: &JobId, e: Error) -> Error {
        match e {
            Error::Conflict { attempts, .. } => Error::Conflict {
                job_id: job_id.clone(),
                attempts,
            },
            e => e,
        }
    }

    /// Append events that were decided elsewhere, after `expected_sequence`,
    /// without running the aggregate: for importing a history, tests and
    /// benchmarks. The events must be ones the aggregate could have emitted
    /// in that state (a job that cannot fold them will not load). The
    /// store's metadata and hash chain are written as for any commit; a
    /// sequence that does not follow the stored history is a `Conflict`.
    pub async fn append_events(
        &self,
        job_id: &JobId,
        expected_sequence: u64,
        events: Vec<JobEvent>,
        metadata: Metadata,
    ) -> Result<Appended> {
        let s = &self.shared;
        if events.is_empty() {
            return Err(Error::Database(
                "append_events needs at least one event".into(),
            ));
        }
        if expected_sequence + events.len() as u64 > MAX_JOB_EVENTS {
            return Err(Error::HistoryFull {
                job_id: job_id.clone(),
                limit: MAX_JOB_EVENTS,
            });
        }
        // No prev_hash given: the repository reads the predecessor's hash
        // and tenant itself.
        let serialized = serialize(
            job_id,
            expected_sequence,
            &events,
            caller_metadata(metadata),
        )?;
        let last = expected_sequence + events.len() as u64;
        // Decided elsewhere: the next command reads the job back.
        s.cache_job(job_id, None);
        let (position, head) = s
            .repo
            .commit::<TrainingJob>(&serialized)
            .await
            .map_err(|e| self.conflict_for(job_id, e.into()))?;
        s.remember_head(job_id, head.sig);
        s.announce(job_id, position, last, &events);
        s.committed_now();
        Ok(Appended {
            sequence: last,
            position,
        })
    }

    /// The job folded from all its events (upcast), or `None` if it has none.
    pub async fn load(&self, job_id: &JobId) -> Result<Option<LoadedJob>> {
        let (job, sequence, _) = self.fold(job_id).await?;
        Ok((sequence > 0).then_some(LoadedJob { job, sequence }))
    }

    /// The job folded from its events, its sequence, and the link of its
    /// last event (the genesis hash for a job with none), after verifying
    /// its chain and head ([`Depth::Links`]: every link recomputed, one
    /// signature checked). A log that does not verify is
    /// [`Error::TamperedLog`], logged as an error: the job is not acted on.
    pub(crate) async fn fold(&self, job_id: &JobId) -> Result<(TrainingJob, u64, String)> {
        let s = &self.shared;
        let log = s.backend.job_log(job_id).await?;
        let known = s.known_head(job_id);
        let report = verify_job_inner(
            job_id,
            &log.events,
            log.head.as_ref(),
            &s.keys,
            Depth::Links,
            Some(s.signing_began.load(std::sync::atomic::Ordering::Relaxed)),
            known.as_deref(),
        );
        if let Some(f) = report.fault {
            tracing::error!(
                job = %job_id,
                fault = %f.fault,
                sequence = f.sequence,
                position = f.position,
                "TAMPERED LOG: refusing to act on job {job_id}: {f}"
            );
            return Err(Error::TamperedLog(f));
        }
        if let Some(h) = &log.head
            && known.as_deref() != Some(h.sig.as_str())
        {
            s.remember_head(job_id, h.sig.clone());
        }
        let sequence = log.events.last().map_or(0, |e| e.sequence);
        let prev_hash = log
            .events
            .last()
            .and_then(|e| e.metadata.get(HASH).and_then(serde_json::Value::as_str))
            .unwrap_or(GENESIS_HASH)
            .to_owned();
        let mut job = TrainingJob::default();
        for r in log.events {
            let bad = |err: serde_json::Error| {
                Error::serialization(format!(
                    "event {} of job {job_id} ({} {}): {err}",
                    r.sequence, r.event_type, r.event_version
                ))
            };
            let old = s
                .upcasters
                .iter()
                .any(|u| u.can_upcast(&r.event_type, &r.event_version));
            let event: JobEvent = if old {
                let mut e = SerializedEvent::new(
                    job_id.to_string(),
                    r.sequence as usize,
                    <TrainingJob as Aggregate>::TYPE.to_owned(),
                    r.event_type.clone(),
                    r.event_version.clone(),
                    r.payload.clone(),
                    serde_json::Value::Null,
                );
                // The same fold cqrs-es applies on load.
                for u in &s.upcasters {
                    if u.can_upcast(&e.event_type, &e.event_version) {
                        e = u.upcast(e);
                    }
                }
                serde_json::from_value(e.payload).map_err(bad)?
            } else {
                JobEvent::deserialize(&r.payload).map_err(bad)?
            };
            job.apply(event);
        }
        Ok((job, sequence, prev_hash))
    }

    /// The job's events with positions and metadata, upcast, in sequence order.
    pub async fn history(&self, job_id: &JobId) -> Result<Vec<StoredEvent>> {
        self.raw_history(job_id)
            .await?
            .iter()
            .map(|r| r.to_stored(&self.shared.upcasters))
            .collect()
    }

    /// The job's events exactly as stored (what the hash chain covers).
    pub async fn raw_history(&self, job_id: &JobId) -> Result<Vec<RawEvent>> {
        self.shared.backend.job_events(job_id).await
    }

    /// Verify the job's chain, head and every signature with this store's
    /// keys; [`Error::TamperedLog`] names the first event that does not
    /// verify (an unsigned prefix, written before signing, counts).
    pub async fn verify_job(&self, job_id: &JobId) -> Result<()> {
        let report = self
            .verify_job_with(job_id, &self.shared.keys, Depth::Full)
            .await?;
        match report.first_problem() {
            Some(f) => Err(Error::TamperedLog(f)),
            None => Ok(()),
        }
    }

    /// Start the projection runner that keeps the views; it stops when
    /// `shutdown` is cancelled. One per process is enough; several processes
    /// may each run one on a shared database.
    pub fn start_projections(&self, shutdown: CancellationToken) -> JoinHandle<Result<()>> {
        self.shared
            .views_here
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(projection::run(self.shared.clone(), shutdown))
    }

    /// Apply every readable event to the views now, without a runner.
    /// Returns the views' position.
    pub async fn catch_up_views(&self) -> Result<Position> {
        let mut from = self.shared.backend.checkpoint(VIEWS).await?;
        loop {
            let (cp, any) = projection::step(&self.shared, from).await?;
            if !any {
                return Ok(cp);
            }
            from = cp;
        }
    }

    /// Empty the views and rebuild them from position 0.
    pub async fn rebuild_views(&self) -> Result<Position> {
        {
            let _turn = self.shared.write_turn().await;
            self.shared.backend.reset_views(VIEWS).await?;
        }
        self.shared.views_at.send_replace(0);
        self.catch_up_views().await
    }

    /// Wait until the views include `position` (from [`Committed::position`]).
    /// Needs a projection runner somewhere (this process or another sharing
    /// the database); without one it waits forever, so prefer
    /// [`wait_for_timeout`](Self::wait_for_timeout) where that can happen.
    pub async fn wait_for(&self, position: Position) -> Result<()> {
        let mut moved = self.shared.views_at.subscribe();
        // With a runner in this process, its batches say when the views
        // pass `position`: a batch applied after this call began has read
        // the checkpoint in its transaction, so it cannot predate a reset
        // of the views by another process. The database is then asked
        // only at the poll interval, as a backstop.
        let here = self
            .shared
            .views_here
            .load(std::sync::atomic::Ordering::Relaxed);
        let poll = self.shared.options.poll_interval;
        let mut wait = if here { poll } else { Duration::from_millis(1) };
        let mut ask = !here || *moved.borrow_and_update() >= position;
        loop {
            // The database, not the local watch, is the truth: another
            // process may have rebuilt the views.
            if ask {
                let cp = self.shared.backend.checkpoint(VIEWS).await?;
                if cp >= position {
                    return Ok(());
                }
            }
            ask = true;
            // Asked again once this process' runner has passed `position`,
            // or at the next tick (another process' runner may have): not
            // at every batch before (under load, each waiter would ask
            // once per batch of every other caller's events).
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    changed = moved.changed() => match changed {
                        Ok(()) if *moved.borrow_and_update() >= position => {
                            if here {
                                return Ok(());
                            }
                            break;
                        }
                        Ok(()) => {}
                        Err(_) => {
                            (&mut sleep).await;
                            break;
                        }
                    },
                    _ = &mut sleep => break,
                }
            }
            wait = (wait * 2).min(poll);
        }
    }

    /// [`wait_for`](Self::wait_for) with a deadline: [`Error::Timeout`] after `timeout`.
    pub async fn wait_for_timeout(&self, position: Position, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.wait_for(position)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                wanted: position,
                reached: self.shared.backend.checkpoint(VIEWS).await?,
            }),
        }
    }

    /// Close the database connections (pending calls fail afterwards).
    pub async fn close(&self) {
        self.shared.stop.cancel();
        match &self.shared.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
            Backend::Memory(..) => {}
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}
