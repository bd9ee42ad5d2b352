//! Several jobs' commands written together: [`Store::execute_many`], what a
//! poll that leases several steps at once uses, and
//! [`Store::execute_after`], what a completion that leases the executor's
//! next steps uses. Each command is decided
//! as [`Store::execute`] would decide it; the writes then share as few
//! transactions as the backend allows (one on SQLite, PostgreSQL and in
//! memory, see `EventRepo::insert_many`). Anything the batch cannot settle (a
//! conflict, a refusal decided on a cached job, an error) is run again on
//! its own through [`Store::execute`], so each command gets the answer it
//! would have had alone.

use std::collections::HashSet;

use loraflow_core::ids::JobId;
use loraflow_core::job::{JobCommand, TrainingJob};

use crate::error::Result;
use crate::event::Metadata;
use crate::retry::retry_safe;
use crate::store::{Committed, Decided, Decision, Store, caller_metadata};

/// The most commands [`Store::execute_many`] writes in one go; more are
/// written in further batches.
pub const MAX_BATCH: usize = 256;

/// What [`Store::execute_after`] answers.
#[derive(Debug)]
pub struct After {
    /// The first command's answer, as [`Store::execute`] would give it.
    pub first: Result<Committed>,
    /// The other commands' answers, in order, each as `execute` would give
    /// it; `None` when the first was not written with them, and then none
    /// of them was run.
    pub then: Option<Vec<Result<Committed>>>,
}

impl Store {
    /// Run one command on each of several jobs; the answers in the order
    /// of `commands`, each what [`execute`](Self::execute) would answer.
    /// Retry-safe commands on distinct jobs are decided on the jobs as
    /// this process last wrote them (else as stored) and written together;
    /// a command that is not retry-safe, or a second one on the same job,
    /// runs on its own after the batch.
    pub async fn execute_many(
        &self,
        commands: Vec<(JobId, JobCommand)>,
        metadata: Metadata,
    ) -> Vec<Result<Committed>> {
        let mut answers: Vec<Option<Result<Committed>>> = Vec::with_capacity(commands.len());
        answers.resize_with(commands.len(), || None);
        let mut start = 0;
        while start < commands.len() {
            let end = (start + MAX_BATCH).min(commands.len());
            self.batch(
                &commands[start..end],
                &metadata,
                &mut answers[start..end],
                false,
            )
            .await;
            start = end;
        }
        self.settle(&commands, answers, &metadata).await
    }

    /// Run `then` only with `first`: as [`execute_many`](Self::execute_many)
    /// would run them all, but the others are written only once `first` is
    /// (in its transaction on SQLite; on PostgreSQL its transaction commits
    /// first), and not at all when `first` is refused, writes nothing, or
    /// cannot be written with them. A completion and the leases it hands
    /// the executor for its next steps are written so, in one commit where
    /// the backend allows. Past [`MAX_BATCH`] commands in all, the others
    /// run one by one after `first` is written.
    pub async fn execute_after(
        &self,
        first: (JobId, JobCommand),
        then: Vec<(JobId, JobCommand)>,
        metadata: Metadata,
    ) -> After {
        let mut commands = Vec::with_capacity(then.len() + 1);
        commands.push(first);
        commands.extend(then);
        let mut answers: Vec<Option<Result<Committed>>> = Vec::with_capacity(commands.len());
        answers.resize_with(commands.len(), || None);
        // Past the first batch, the rest run one by one once `first` is in.
        let n = commands.len().min(MAX_BATCH);
        self.batch(&commands[..n], &metadata, &mut answers[..n], true)
            .await;
        match answers[0].take() {
            Some(Ok(c)) if c.position.is_some() => {
                answers[0] = Some(Ok(c));
                let mut all = self.settle(&commands, answers, &metadata).await;
                let first = all.remove(0);
                After {
                    first,
                    then: Some(all),
                }
            }
            // Answered in the batch without a write (decided on the job as
            // stored), or left for a run of its own.
            answer => {
                let first = match answer {
                    Some(a) => a,
                    None => {
                        let (job, command) = &commands[0];
                        self.execute(job, command.clone(), metadata).await
                    }
                };
                After { first, then: None }
            }
        }
    }

    /// The answers, those the batch left run one by one, with the store's
    /// retries.
    async fn settle(
        &self,
        commands: &[(JobId, JobCommand)],
        answers: Vec<Option<Result<Committed>>>,
        metadata: &Metadata,
    ) -> Vec<Result<Committed>> {
        let alone = answers
            .iter()
            .zip(commands)
            .filter(|(a, _)| a.is_none())
            .map(|(_, (job, command))| self.execute(job, command.clone(), metadata.clone()));
        let mut alone = futures::future::join_all(alone).await.into_iter();
        answers
            .into_iter()
            .map(|a| match a {
                Some(a) => a,
                None => alone.next().expect("one answer per command left"),
            })
            .collect()
    }

    /// Decide and write what can go together; fill in the answers settled.
    /// `gate`: nothing is written unless the first command is, first.
    async fn batch(
        &self,
        commands: &[(JobId, JobCommand)],
        metadata: &Metadata,
        answers: &mut [Option<Result<Committed>>],
        gate: bool,
    ) {
        let s = self.shared();
        let caller = caller_metadata(metadata.clone());
        let mut jobs = HashSet::new();
        let mut cached = Vec::new();
        let mut unread = Vec::new();
        for (i, (job, command)) in commands.iter().enumerate() {
            if !retry_safe(command) || !jobs.insert(job.clone()) {
                continue;
            }
            match s.cached_job(job) {
                Some(c) => cached.push((i, c.into_loaded())),
                None => unread.push(i),
            }
        }
        // Jobs this process has not written lately are read, all at once.
        let read =
            futures::future::join_all(unread.iter().map(|&i| self.fold(&commands[i].0))).await;
        let mut decided: Vec<(usize, Decided, bool)> = Vec::new();
        let loaded = cached
            .into_iter()
            .map(|(i, l)| (i, Ok(l), true))
            .chain(unread.into_iter().zip(read).map(|(i, l)| (i, l, false)));
        for (i, loaded, from_cache) in loaded {
            let (job, command) = &commands[i];
            let loaded: (TrainingJob, u64, String) = match loaded {
                Ok(l) => l,
                Err(e) => {
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            match self.decide(job, None, command.clone(), caller.clone(), loaded) {
                Ok(Decision::Write(d)) => decided.push((i, d, from_cache)),
                // On the stored job the answer stands; on a cached one it
                // is decided again on the stored job (as `execute` does).
                Ok(Decision::Nothing(c)) if !from_cache => answers[i] = Some(Ok(c)),
                Err(e) if !from_cache => answers[i] = Some(Err(e)),
                _ => s.cache_job(job, None),
            }
        }
        if gate {
            decided.sort_by_key(|(i, _, _)| *i);
        }
        if decided.is_empty() || (gate && decided.first().is_none_or(|(i, _, _)| *i != 0)) {
            return;
        }
        let sets: Vec<_> = decided
            .iter()
            .map(|(_, d, _)| d.serialized.clone())
            .collect();
        let written = s.repo.commit_many::<TrainingJob>(&sets, gate).await;
        for ((i, d, _), w) in decided.into_iter().zip(written) {
            match w {
                Ok((position, head)) => answers[i] = Some(Ok(self.written(d, position, head))),
                // Left for `execute` on its own, on the job as stored.
                Err(e) => {
                    tracing::debug!(job = %d.job_id, "a batched write failed; executing it alone: {e}");
                    s.cache_job(&d.job_id, None);
                }
            }
        }
        s.committed_now();
    }
}
