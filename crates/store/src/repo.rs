//! The event repositories behind cqrs-es' `PersistedEventStore`: sqlite-es,
//! postgres-es, or the in-process log, wrapped in [`ChainRepository`], which
//! writes the store's own metadata (`recorded_at`, `tenant`, the audit chain
//! link and signature) into every event as it is persisted, and the job's
//! signed head beside them.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use loraflow_core::clock::Clock;
use postgres_es::PostgresEventRepository;
use serde_json::{Map, Value};
use sqlite_es::SqliteEventRepository;
use sqlx::{PgPool, SqlitePool};

use crate::backend::memory::MemoryLog;
use crate::backend::{postgres, sqlite};
use crate::chain::{CHAIN_VERSION, GENESIS_HASH, Head, event_link, event_message, head_message};
use crate::event::{
    CHAIN, HASH, KEY_ID, MAX_JOB_EVENTS, PREV_HASH, Position, RECORDED_AT, SIG, TENANT,
};
use crate::group::GroupCommit;
use crate::keys::AuditKey;

/// One of the three repositories; dispatches every read to it. Writes go
/// through [`EventRepo::insert`], on the same pool.
pub(crate) enum EventRepo {
    Sqlite(SqliteEventRepository, SqlitePool),
    Postgres(PostgresEventRepository, PgPool),
    Memory(Arc<MemoryLog>),
}

macro_rules! dispatch {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            EventRepo::Sqlite($r, _) => $call,
            EventRepo::Postgres($r, ..) => $call,
            EventRepo::Memory($r) => $call,
        }
    };
}

impl EventRepo {
    /// Whether several jobs' commits can be one transaction (all or
    /// nothing): on SQLite and PostgreSQL; the in-process log writes each
    /// on its own.
    pub(crate) fn shares_transactions(&self) -> bool {
        !matches!(self, EventRepo::Memory(_))
    }

    /// Write several jobs' commits (each as for [`insert`](Self::insert),
    /// the jobs distinct) in as few transactions as the backend allows:
    /// one on SQLite; on PostgreSQL one per [`MAX_TX_EVENTS`] rows (a
    /// position holds the row's place in its transaction in its low bits),
    /// so one for any batch the engine writes, the groups written at once;
    /// in memory one by one. Each commit's answer in order: a commit fails
    /// with its transaction. `gate`: the first commit is written before
    /// the others or with them (in its transaction), and when it fails
    /// none of them is written.
    ///
    /// [`MAX_TX_EVENTS`]: postgres::MAX_TX_EVENTS
    pub(crate) async fn insert_many(
        &self,
        aggregate_type: &str,
        commits: &[(Vec<SerializedEvent>, Head)],
        gate: bool,
    ) -> Vec<Result<Position, PersistenceError>> {
        match self {
            EventRepo::Sqlite(_, pool) => spread(
                sqlite::insert_many(pool, aggregate_type, commits).await,
                commits.len(),
            ),
            EventRepo::Postgres(_, pool) => {
                // Rows go in a fixed order: the gate's commit first (its
                // events lead the feed), the others by job id, so that two
                // batches meeting on the same jobs take their locks in the
                // same order rather than deadlock.
                let mut order: Vec<usize> = (0..commits.len()).collect();
                let skip = usize::from(gate);
                order[skip.min(commits.len())..].sort_by(|&a, &b| {
                    commits[a]
                        .1
                        .job_id
                        .as_str()
                        .cmp(commits[b].1.job_id.as_str())
                });
                let sizes: Vec<usize> = order.iter().map(|&i| commits[i].0.len()).collect();
                let groups = postgres::transaction_groups(&sizes);
                let write = |g: &std::ops::Range<usize>| {
                    let members: Vec<(&[SerializedEvent], &Head)> = order[g.clone()]
                        .iter()
                        .map(|&i| (commits[i].0.as_slice(), &commits[i].1))
                        .collect();
                    async move { postgres::insert_many(pool, aggregate_type, &members).await }
                };
                let mut answers: Vec<Option<Result<Position, PersistenceError>>> =
                    (0..commits.len()).map(|_| None).collect();
                let mut put = |g: &std::ops::Range<usize>, w| {
                    for (&i, a) in order[g.clone()].iter().zip(spread(w, g.len())) {
                        answers[i] = Some(a);
                    }
                };
                // Groups are consecutive: with a gate, the first (which
                // holds the gate's commit) is written before the rest.
                let rest = if gate && let Some(first) = groups.first() {
                    let w = write(first).await;
                    let failed = w.is_err();
                    put(first, w);
                    if failed {
                        for g in &groups[1..] {
                            put(
                                g,
                                Err(unknown("not written: the commit it follows failed".into())),
                            );
                        }
                        &groups[groups.len()..]
                    } else {
                        &groups[1..]
                    }
                } else {
                    &groups[..]
                };
                let written = futures::future::join_all(rest.iter().map(write)).await;
                for (g, w) in rest.iter().zip(written) {
                    put(g, w);
                }
                answers
                    .into_iter()
                    .map(|a| a.expect("every commit is in one group"))
                    .collect()
            }
            EventRepo::Memory(log) => {
                let mut answers = Vec::with_capacity(commits.len());
                for (i, (events, head)) in commits.iter().enumerate() {
                    let failed = gate && i > 0 && answers.first().is_some_and(Result::is_err);
                    answers.push(if failed {
                        Err(unknown("not written: the commit it follows failed".into()))
                    } else {
                        log.insert(aggregate_type, events, head)
                    });
                }
                answers
            }
        }
    }
}

/// One transaction's outcome as each of its `n` commits' answer.
fn spread(
    written: Result<Vec<Position>, PersistenceError>,
    n: usize,
) -> Vec<Result<Position, PersistenceError>> {
    match written {
        Ok(positions) => positions.into_iter().map(Ok).collect(),
        Err(e) => (0..n)
            .map(|_| {
                Err(match &e {
                    PersistenceError::OptimisticLockError => PersistenceError::OptimisticLockError,
                    PersistenceError::ConnectionError(c) => {
                        PersistenceError::ConnectionError(c.to_string().into())
                    }
                    other => unknown(other.to_string()),
                })
            })
            .collect(),
    }
}

impl PersistedEventRepository for EventRepo {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        dispatch!(self, r => r.get_events::<A>(aggregate_id).await)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        dispatch!(self, r => r.get_last_events::<A>(aggregate_id, last_sequence).await)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        dispatch!(self, r => r.get_snapshot::<A>(aggregate_id).await)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        dispatch!(self, r => r.persist::<A>(events, snapshot_update).await)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        dispatch!(self, r => r.stream_events::<A>(aggregate_id).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        dispatch!(self, r => r.stream_all_events::<A>().await)
    }
}

/// The repository every store uses: the backend's, plus the store's metadata
/// on every event it persists: `recorded_at`, `tenant`, the chain link and
/// the server key's signature (see [`crate::chain`]), and the job's signed
/// head, written in the same transaction. Cheap to clone.
///
/// [`Store`](crate::Store) passes the previous event's link (it has just
/// loaded and verified the job) as `prev_hash` metadata. A caller of the
/// plain cqrs-es framework does not, and the previous event is then read
/// back here.
#[derive(Clone)]
pub struct ChainRepository {
    repo: Arc<EventRepo>,
    /// Where every commit is written (see [`crate::group`]).
    group: GroupCommit,
    clock: Arc<dyn Clock>,
    key: AuditKey,
    /// How long each commit took, chaining and signing included.
    commit_seconds: prometheus::Histogram,
}

/// Commit latency buckets, in seconds: 0.5 ms to 10 s.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn unknown(msg: String) -> PersistenceError {
    PersistenceError::UnknownError(msg.into())
}

/// The tenant a `JobCreated` payload names.
fn created_tenant(payload: &Value) -> Option<String> {
    payload
        .get("JobCreated")?
        .get("spec")?
        .get("tenant")?
        .as_str()
        .map(str::to_owned)
}

impl ChainRepository {
    /// Commits are written holding `turn` (see [`GroupCommit::start`]).
    pub(crate) fn new(
        repo: Arc<EventRepo>,
        turn: Arc<tokio::sync::Mutex<()>>,
        clock: Arc<dyn Clock>,
        key: AuditKey,
    ) -> Self {
        let commit_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "store_commit_seconds",
                "Time to chain, sign and write one command's events in one transaction.",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
        )
        .expect("a valid histogram");
        Self {
            group: GroupCommit::start(repo.clone(), turn),
            repo,
            clock,
            key,
            commit_seconds,
        }
    }

    /// The group commit every commit goes through.
    pub(crate) fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// The commit latency histogram (a handle: it keeps counting).
    pub(crate) fn commit_seconds(&self) -> prometheus::Histogram {
        self.commit_seconds.clone()
    }

    /// The key that signs what this repository writes.
    pub(crate) fn key(&self) -> &AuditKey {
        &self.key
    }

    /// The hash and tenant of the event before `sequence`.
    async fn predecessor<A: Aggregate>(
        &self,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<(String, Option<String>), PersistenceError> {
        if sequence <= 1 {
            return Ok((GENESIS_HASH.to_owned(), None));
        }
        let events = self
            .repo
            .get_last_events::<A>(aggregate_id, sequence - 2)
            .await?;
        // Missing: the sequence does not follow the stored history, so the
        // insert could only conflict.
        let prev = events
            .iter()
            .find(|e| e.sequence == sequence - 1)
            .ok_or(PersistenceError::OptimisticLockError)?;
        let field = |k: &str| {
            prev.metadata
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok((
            field(HASH).unwrap_or_else(|| GENESIS_HASH.to_owned()),
            field(TENANT),
        ))
    }

    /// Chain and sign `events` and write them with the job's new head in
    /// one transaction; the global position of the last.
    pub(crate) async fn commit<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(Position, Head), PersistenceError> {
        let started = std::time::Instant::now();
        let commit = self.chained::<A>(events).await?;
        let written = self.group.write(A::TYPE, vec![commit], false).await;
        let written = written.into_iter().next().expect("one answer per commit")?;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        Ok(written)
    }

    /// [`commit`](Self::commit) for several jobs at once, written by
    /// [`EventRepo::insert_many`]: each set's answer, in order.
    /// With `gate`, the first set is written first, and the others only
    /// when it is (see [`EventRepo::insert_many`]).
    pub(crate) async fn commit_many<A: Aggregate>(
        &self,
        sets: &[Vec<SerializedEvent>],
        gate: bool,
    ) -> Vec<Result<(Position, Head), PersistenceError>> {
        let started = std::time::Instant::now();
        let mut answers: Vec<Option<Result<(Position, Head), PersistenceError>>> =
            (0..sets.len()).map(|_| None).collect();
        let mut chained = Vec::with_capacity(sets.len());
        let mut members = Vec::with_capacity(sets.len());
        for (i, set) in sets.iter().enumerate() {
            match self.chained::<A>(set).await {
                Ok(c) => {
                    chained.push(c);
                    members.push(i);
                }
                Err(e) if gate && i == 0 => {
                    let why = format!("not written: the commit it follows failed: {e}");
                    answers[0] = Some(Err(e));
                    for a in &mut answers[1..] {
                        *a = Some(Err(unknown(why.clone())));
                    }
                    return answers.into_iter().map(|a| a.expect("answered")).collect();
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let written = self.group.write(A::TYPE, chained, gate).await;
        let took = started.elapsed().as_secs_f64();
        for (i, w) in members.into_iter().zip(written) {
            if w.is_ok() {
                self.commit_seconds.observe(took);
            }
            answers[i] = Some(w);
        }
        answers
            .into_iter()
            .map(|a| a.expect("every set answered"))
            .collect()
    }

    /// `events` with the store's metadata, links and signatures filled in,
    /// and the job's head after them.
    async fn chained<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(Vec<SerializedEvent>, Head), PersistenceError> {
        let first = &events[0];
        for (i, e) in events.iter().enumerate() {
            if e.sequence != first.sequence + i || e.aggregate_id != first.aggregate_id {
                return Err(unknown(format!(
                    "events of one commit must be one job's, in consecutive sequences; got {}#{} after {}#{}",
                    e.aggregate_id, e.sequence, first.aggregate_id, first.sequence
                )));
            }
        }
        let last = events[events.len() - 1].sequence as u64;
        if last > MAX_JOB_EVENTS {
            return Err(unknown(format!(
                "job {} would reach {last} events; the limit is {MAX_JOB_EVENTS}",
                first.aggregate_id
            )));
        }
        let given = |k: &str| {
            first
                .metadata
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (mut prev, stored_tenant) = match given(PREV_HASH) {
            Some(p) => (p, None),
            None => {
                self.predecessor::<A>(&first.aggregate_id, first.sequence)
                    .await?
            }
        };
        let tenant = given(TENANT)
            .or(stored_tenant)
            .or_else(|| created_tenant(&first.payload));
        let recorded_at = given(RECORDED_AT).unwrap_or_else(|| {
            self.clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        });
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let mut e = e.clone();
            let mut meta = match std::mem::take(&mut e.metadata) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            meta.insert(RECORDED_AT.into(), Value::String(recorded_at.clone()));
            if let Some(t) = &tenant {
                meta.insert(TENANT.into(), Value::String(t.clone()));
            }
            meta.insert(CHAIN.into(), Value::String(CHAIN_VERSION.into()));
            meta.insert(KEY_ID.into(), Value::String(self.key.key_id().into()));
            for k in [HASH, PREV_HASH, SIG] {
                meta.remove(k);
            }
            let meta = Value::Object(meta);
            let link = event_link(
                &prev,
                &e.aggregate_id,
                e.sequence as u64,
                &e.event_type,
                &e.event_version,
                &e.payload,
                &meta,
            );
            let Value::Object(mut meta) = meta else {
                unreachable!("built as an object above")
            };
            meta.insert(PREV_HASH.into(), Value::String(prev));
            meta.insert(HASH.into(), Value::String(link.clone()));
            meta.insert(
                SIG.into(),
                Value::String(self.key.sign(&event_message(&link))),
            );
            e.metadata = Value::Object(meta);
            prev = link;
            out.push(e);
        }
        let job_id = first.aggregate_id.clone();
        let sequence = last;
        let head = Head {
            sig: self.key.sign(&head_message(&job_id, sequence, &prev)),
            job_id,
            sequence,
            link: prev,
            key_id: self.key.key_id().into(),
        };
        Ok((out, head))
    }
}

impl PersistedEventRepository for ChainRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.repo.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.repo
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.repo.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if events.is_empty() || snapshot_update.is_some() {
            // Snapshots are never written (see DESIGN.md); the backend's own
            // path stays for completeness.
            let events = if events.is_empty() {
                events.to_vec()
            } else {
                self.chained::<A>(events).await?.0
            };
            return self.repo.persist::<A>(&events, snapshot_update).await;
        }
        self.commit::<A>(events).await.map(|_| ())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.repo.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.repo.stream_all_events::<A>().await
    }
}
