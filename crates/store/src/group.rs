//! Group commit. Every commit of a store goes through one writer task: a
//! commit that arrives while the writer is busy waits, and all that waited
//! are written together in its next transaction. Under load a transaction
//! (its round trip, its plan, its WAL flush on PostgreSQL, its thread
//! crossings on SQLite) is shared by as many commits as arrived during the
//! one before; alone, a commit is written at once as before.
//!
//! Each caller's commits keep their answer as if written alone: when a
//! shared transaction fails (one commit's sequence was taken, say), each
//! caller's commits are written again on their own, so only the one at
//! fault fails. Commits of one job never share a transaction (the later
//! waits for the next), nor do groups past [`MAX_GROUP_ROWS`] events or
//! [`MAX_GROUP_COMMITS`] commits. A caller that stops waiting (its future
//! dropped) does not stop its write: the task writes and answers no one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use tokio::sync::{mpsc, oneshot};

use crate::chain::Head;
use crate::event::Position;
use crate::repo::EventRepo;

/// The most events a shared transaction takes from several callers (one
/// caller's commits go whole, however many).
pub(crate) const MAX_GROUP_ROWS: usize = 2048;

/// The most commits a shared transaction takes from several callers.
pub(crate) const MAX_GROUP_COMMITS: usize = 256;

/// One commit: a job's chained events and its head after them.
pub(crate) type Commit = (Vec<SerializedEvent>, Head);

/// Each commit's answer: its last position and its head.
pub(crate) type Answer = Result<(Position, Head), PersistenceError>;

/// One caller's commits, written as `EventRepo::insert_many` writes them.
struct Unit {
    aggregate_type: &'static str,
    commits: Vec<Commit>,
    gate: bool,
    reply: oneshot::Sender<Vec<Answer>>,
}

impl Unit {
    fn rows(&self) -> usize {
        self.commits.iter().map(|(events, _)| events.len()).sum()
    }
}

/// The writer task's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Unit>,
    /// Commits sent and not yet taken into a transaction.
    waiting: Arc<AtomicUsize>,
    /// Held by the writer while it writes (on SQLite the process' write
    /// turn, which the views' writes take too); here for tests to hold.
    #[cfg(test)]
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Commits per transaction written.
    sizes: prometheus::Histogram,
}

impl GroupCommit {
    /// Start the writer task on `repo`; it writes holding `turn`, and ends
    /// once every handle is dropped.
    pub(crate) fn start(repo: Arc<EventRepo>, turn: Arc<tokio::sync::Mutex<()>>) -> Self {
        let sizes = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "store_commits_per_transaction",
                "Commits written together in one transaction by the store's group commit.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("a valid histogram");
        let (queue, units) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(
            repo,
            units,
            turn.clone(),
            waiting.clone(),
            sizes.clone(),
        ));
        Self {
            queue,
            waiting,
            #[cfg(test)]
            turn,
            sizes,
        }
    }

    /// Write `commits` (distinct jobs) as `EventRepo::insert_many` would,
    /// in the writer's next transaction: each commit's answer, in order.
    pub(crate) async fn write(
        &self,
        aggregate_type: &'static str,
        commits: Vec<Commit>,
        gate: bool,
    ) -> Vec<Answer> {
        let n = commits.len();
        let (reply, answer) = oneshot::channel();
        self.waiting.fetch_add(n, Ordering::SeqCst);
        let unit = Unit {
            aggregate_type,
            commits,
            gate,
            reply,
        };
        if let Err(mpsc::error::SendError(unit)) = self.queue.send(unit) {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            return closed(unit.commits.len());
        }
        answer.await.unwrap_or_else(|_| closed(n))
    }

    /// Commits sent and not yet taken into a transaction.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The commits-per-transaction histogram (a handle: it keeps counting).
    pub(crate) fn sizes(&self) -> prometheus::Histogram {
        self.sizes.clone()
    }

    /// Hold the writer between transactions until the guard is dropped
    /// (what a commit meanwhile waits for).
    #[cfg(test)]
    pub(crate) async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }
}

fn closed(n: usize) -> Vec<Answer> {
    (0..n)
        .map(|_| {
            Err(PersistenceError::UnknownError(
                "the store's writer has stopped; nothing was written".into(),
            ))
        })
        .collect()
}

/// The writer: take what waits, write it in one transaction, answer.
async fn run(
    repo: Arc<EventRepo>,
    mut units: mpsc::UnboundedReceiver<Unit>,
    turn: Arc<tokio::sync::Mutex<()>>,
    waiting: Arc<AtomicUsize>,
    sizes: prometheus::Histogram,
) {
    // Units taken from the queue that could not join the last group: they
    // lead the next.
    let mut held: VecDeque<Unit> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(u) => u,
            None => match units.recv().await {
                Some(u) => u,
                None => return,
            },
        };
        let _turn = turn.lock().await;
        let group = gather(first, &mut held, &mut units);
        let n: usize = group.iter().map(|u| u.commits.len()).sum();
        waiting.fetch_sub(n, Ordering::SeqCst);
        write_group(&repo, group, &sizes).await;
    }
}

/// `first` and the units that may share its transaction, those held over
/// from the last group first, then what waits in the queue; the others
/// are held for the next.
fn gather(
    first: Unit,
    held: &mut VecDeque<Unit>,
    units: &mut mpsc::UnboundedReceiver<Unit>,
) -> Vec<Unit> {
    let mut jobs: HashSet<String> = first
        .commits
        .iter()
        .map(|(_, h)| h.job_id.clone())
        .collect();
    let (mut rows, mut commits) = (first.rows(), first.commits.len());
    let mut group = vec![first];
    let mut later = VecDeque::new();
    let mut earlier = std::mem::take(held);
    loop {
        let full = rows >= MAX_GROUP_ROWS || commits >= MAX_GROUP_COMMITS;
        let next = match earlier.pop_front() {
            Some(u) => u,
            None if full => break,
            None => match units.try_recv() {
                Ok(u) => u,
                Err(_) => break,
            },
        };
        let fits = next.aggregate_type == group[0].aggregate_type
            && rows + next.rows() <= MAX_GROUP_ROWS
            && commits + next.commits.len() <= MAX_GROUP_COMMITS
            && next.commits.iter().all(|(_, h)| !jobs.contains(&h.job_id));
        if fits {
            jobs.extend(next.commits.iter().map(|(_, h)| h.job_id.clone()));
            rows += next.rows();
            commits += next.commits.len();
            group.push(next);
        } else {
            later.push_back(next);
        }
    }
    *held = later;
    group
}

/// Write a group in one transaction; when that fails, each unit alone.
async fn write_group(repo: &EventRepo, mut group: Vec<Unit>, sizes: &prometheus::Histogram) {
    if group.len() == 1 {
        let unit = group.pop().expect("one unit");
        write_alone(repo, unit, sizes).await;
        return;
    }
    if !repo.shares_transactions() {
        for unit in group {
            write_alone(repo, unit, sizes).await;
        }
        return;
    }
    let counts: Vec<usize> = group.iter().map(|u| u.commits.len()).collect();
    let all: Vec<Commit> = group
        .iter_mut()
        .flat_map(|u| std::mem::take(&mut u.commits))
        .collect();
    let written = repo.insert_many(group[0].aggregate_type, &all, false).await;
    let failed = written.iter().any(Result::is_err);
    if !failed {
        sizes.observe(all.len() as f64);
    }
    let mut all = all.into_iter();
    let mut written = written.into_iter();
    for (mut unit, n) in group.into_iter().zip(counts) {
        unit.commits = all.by_ref().take(n).collect();
        let answers: Vec<_> = written.by_ref().take(n).collect();
        if failed && answers.iter().all(Result::is_err) {
            // Not written with the others: on its own, for its own answer.
            write_alone(repo, unit, sizes).await;
        } else {
            let answers = answers
                .into_iter()
                .zip(std::mem::take(&mut unit.commits))
                .map(|(w, (_, head))| w.map(|p| (p, head)))
                .collect();
            let _ = unit.reply.send(answers);
        }
    }
}

async fn write_alone(repo: &EventRepo, unit: Unit, sizes: &prometheus::Histogram) {
    let written = repo
        .insert_many(unit.aggregate_type, &unit.commits, unit.gate)
        .await;
    let ok = written.iter().filter(|w| w.is_ok()).count();
    if ok > 0 {
        sizes.observe(ok as f64);
    }
    let answers = written
        .into_iter()
        .zip(unit.commits)
        .map(|(w, (_, head))| w.map(|p| (p, head)))
        .collect();
    let _ = unit.reply.send(answers);
}
