use std::sync::Arc;

use chrono::Duration;
use proptest::prelude::*;

use super::*;
use crate::catalogue::Catalogue;
use crate::clock::Clock;
use crate::executor::Capabilities;
use crate::ids::{ExecutorId, JobId, StepId, TenantId};
use crate::job::canned::{Driver, sample_spec};
use crate::job::{JobCommand, JobEvent, LeaseStep, StepErrorKind};
use crate::workflow::StepKind;

/// Several jobs sharing one clock, their events fed in order into a state.
struct Fleet {
    drivers: Vec<Driver>,
    state: SchedulerState,
    position: u64,
    fed: Vec<usize>,
}

impl Fleet {
    fn new() -> Self {
        Self {
            drivers: vec![],
            state: SchedulerState::new(Arc::new(Catalogue::builtin())),
            position: 0,
            fed: vec![],
        }
    }

    fn job(&mut self, id: &str, tenant: &str, priority: i32, base_model: &str) -> usize {
        self.job_with(id, tenant, priority, base_model, |_| {})
    }

    /// [`job`](Self::job) with its standard workflow changed by `edit`.
    fn job_with(
        &mut self,
        id: &str,
        tenant: &str,
        priority: i32,
        base_model: &str,
        edit: impl FnOnce(&mut crate::workflow::WorkflowSpec),
    ) -> usize {
        let mut d = Driver::new();
        d.job_id = JobId::new(id);
        let mut spec = sample_spec();
        spec.tenant = TenantId::new(tenant);
        spec.priority = priority;
        spec.base_model = base_model.into();
        let mut workflow = crate::workflow::standard_lora(
            d.services.catalogue.base_model(&spec.base_model).unwrap(),
            spec.engine,
        );
        edit(&mut workflow);
        spec.workflow = Some(workflow);
        d.create_with(spec).submit();
        self.drivers.push(d);
        self.fed.push(0);
        self.sync();
        self.drivers.len() - 1
    }

    fn sync(&mut self) {
        for (i, d) in self.drivers.iter().enumerate() {
            for e in &d.events[self.fed[i]..] {
                self.position += 1;
                self.state.apply(self.position, &d.job_id, e);
            }
            self.fed[i] = d.events.len();
        }
    }

    fn advance(&mut self, by: Duration) {
        for d in &mut self.drivers {
            d.advance(by);
        }
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.drivers[0].clock.now()
    }

    fn lease(&mut self, job: usize, step: &str, executor: &str) {
        let d = &mut self.drivers[job];
        let lease_id = d.next_lease_id();
        d.exec(JobCommand::LeaseStep(LeaseStep {
            step_id: StepId::new(step),
            lease_id,
            executor_id: ExecutorId::new(executor),
            instance: None,
        }))
        .unwrap();
        self.sync();
    }
}

fn cpu(kinds: &[&str]) -> Capabilities {
    Capabilities {
        kinds: kinds.iter().map(|k| StepKind::from(*k)).collect(),
        ..Capabilities::default()
    }
}

fn picked(f: &Fleet, exec: &str, caps: &Capabilities) -> Option<(String, String)> {
    f.state
        .pick(&ExecutorId::new(exec), caps, f.now())
        .map(|s| (s.job_id.to_string(), s.step_id.to_string()))
}

#[test]
fn a_submitted_job_offers_its_first_step_to_a_capable_executor() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    assert_eq!(
        picked(&f, "w", &cpu(&["validate_dataset"])),
        Some(("a".into(), "validate".into()))
    );
    assert_eq!(picked(&f, "w", &cpu(&["train"])), None);
}

#[test]
fn gpu_steps_need_a_gpu_executor_with_enough_memory() {
    let mut f = Fleet::new();
    let a = f.job("a", "acme", 0, "sd15");
    f.drivers[a].run("validate").run("label");
    f.sync();
    let mut caps = cpu(&["train"]);
    caps.engines.insert(crate::catalogue::Engine::Native);
    assert_eq!(picked(&f, "w", &caps), None, "no gpu");
    caps.gpu = true;
    caps.vram_gb = 6;
    assert_eq!(picked(&f, "w", &caps), None, "sd15 needs 8 GB");
    caps.vram_gb = 24;
    assert_eq!(picked(&f, "w", &caps), Some(("a".into(), "train".into())));
}

#[test]
fn training_goes_only_to_an_executor_with_the_base_model_installed() {
    use crate::catalogue::Engine;
    use crate::executor::InstalledModel;
    let mut f = Fleet::new();
    let a = f.job("a", "acme", 0, "sd15");
    f.drivers[a].run("validate").run("label");
    f.sync();
    let mut caps = cpu(&["train"]);
    caps.engines.insert(Engine::Native);
    caps.gpu = true;
    caps.vram_gb = 24;
    caps.base_models = [InstalledModel::new(Engine::Native, "tiny-sd")].into();
    assert_eq!(picked(&f, "w", &caps), None, "sd15 is not installed");
    // Another engine's sd15 is not this job's.
    caps.base_models
        .insert(InstalledModel::new(Engine::Kohya, "sd15"));
    assert_eq!(picked(&f, "w", &caps), None);
    caps.base_models
        .insert(InstalledModel::new(Engine::Native, "sd15"));
    assert_eq!(picked(&f, "w", &caps), Some(("a".into(), "train".into())));
    // An executor that lists no native model is offered any.
    caps.base_models.clear();
    assert_eq!(picked(&f, "w", &caps), Some(("a".into(), "train".into())));
}

#[test]
fn an_executor_never_gets_more_than_its_concurrency_limit() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    f.job("b", "acme", 0, "sd15");
    let caps = cpu(&["validate_dataset"]);
    f.lease(0, "validate", "w");
    assert_eq!(f.state.running_on(&ExecutorId::new("w")), 1);
    assert_eq!(picked(&f, "w", &caps), None);
    assert_eq!(
        picked(&f, "other", &caps),
        Some(("b".into(), "validate".into()))
    );
    let two = Capabilities {
        max_concurrent_steps: 2,
        ..caps
    };
    assert_eq!(picked(&f, "w", &two), Some(("b".into(), "validate".into())));
}

#[test]
fn higher_priority_first_then_the_least_served_tenant_then_the_oldest() {
    let mut f = Fleet::new();
    f.job("big-1", "bigco", 0, "sd15");
    f.job("big-2", "bigco", 0, "sd15");
    f.job("big-3", "bigco", 0, "sd15");
    f.job("small", "smallco", 0, "sd15");
    let caps = cpu(&["validate_dataset"]);
    // Oldest first while no tenant holds anything.
    assert_eq!(picked(&f, "w", &caps).unwrap().0, "big-1");
    f.lease(0, "validate", "w1");
    // bigco now holds a lease: smallco's single job goes ahead of bigco's older ones.
    assert_eq!(picked(&f, "w", &caps).unwrap().0, "small");
    f.job("urgent", "bigco", 50, "sd15");
    assert_eq!(picked(&f, "w", &caps).unwrap().0, "urgent");
    let order: Vec<_> = f
        .state
        .ordered_queue()
        .iter()
        .map(|s| s.job_id.to_string())
        .collect();
    assert_eq!(order, ["urgent", "small", "big-2", "big-3"]);
    assert_eq!(
        f.state
            .queue_position(&JobId::new("small"), &StepId::new("validate")),
        Some(1)
    );
}

#[test]
fn a_step_in_backoff_is_not_offered_until_due() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    f.lease(0, "validate", "w");
    let lease = f.drivers[0]
        .job
        .step(&StepId::new("validate"))
        .unwrap()
        .current_lease()
        .unwrap()
        .clone();
    f.drivers[0]
        .exec(JobCommand::FailStep(crate::job::FailStep {
            lease_id: lease,
            error: crate::job::StepError {
                kind: StepErrorKind::Unavailable,
                message: "s3 down".into(),
                retryable: true,
            },
        }))
        .unwrap();
    f.sync();
    let caps = cpu(&["validate_dataset"]);
    assert_eq!(picked(&f, "w", &caps), None);
    let wake = f.state.next_wakeup(f.now()).unwrap();
    assert!(wake > f.now());
    f.advance(wake - f.now());
    assert_eq!(picked(&f, "w", &caps).map(|p| p.1), Some("validate".into()));
}

#[test]
fn overdue_leases_are_due_and_heartbeats_postpone_them() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    f.lease(0, "validate", "w");
    let lease = f.state.leases().next().unwrap().lease_id.clone();
    f.advance(Duration::seconds(100));
    assert!(f.state.due(f.now()).is_empty());
    f.drivers[0]
        .exec(JobCommand::Heartbeat(crate::job::Heartbeat {
            lease_id: lease.clone(),
            progress: Default::default(),
        }))
        .unwrap();
    f.sync();
    f.advance(Duration::seconds(100));
    assert!(
        f.state.due(f.now()).is_empty(),
        "the heartbeat renewed the deadline"
    );
    f.advance(Duration::seconds(30));
    assert_eq!(
        f.state.due(f.now()),
        vec![Action::ExpireLease {
            job_id: JobId::new("a"),
            lease_id: lease
        }]
    );
}

#[test]
fn a_finished_job_leaves_nothing_behind() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    f.lease(0, "validate", "w");
    f.drivers[0]
        .exec(JobCommand::Cancel(crate::job::CancelJob {
            reason: "x".into(),
            cancelled_by: "y".into(),
        }))
        .unwrap();
    f.sync();
    assert_eq!(f.state.queued().count(), 0);
    assert_eq!(f.state.leases().count(), 0);
    assert!(!f.state.is_open(&JobId::new("a")));
}

#[test]
fn replaying_the_feed_rebuilds_the_same_state() {
    let mut f = Fleet::new();
    f.job("a", "acme", 0, "sd15");
    f.job("b", "other", 3, "sd15");
    f.lease(0, "validate", "w");
    let mut rebuilt = SchedulerState::new(Arc::new(Catalogue::builtin()));
    let mut pos = 0;
    for d in &f.drivers {
        for e in &d.events {
            pos += 1;
            rebuilt.apply(pos, &d.job_id, e);
        }
    }
    let q = |s: &SchedulerState| {
        s.queued()
            .map(|q| (q.job_id.clone(), q.step_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&rebuilt), q(&f.state));
    assert_eq!(rebuilt.leases().count(), f.state.leases().count());
}

proptest! {
    /// Whatever the queue, a pick respects capabilities, backoff and the
    /// executor's concurrency limit, and is the first eligible in serving order.
    #[test]
    fn picks_are_always_eligible(
        jobs in proptest::collection::vec((0usize..3, -2i32..3, any::<bool>()), 1..12),
        leased in proptest::collection::vec(any::<usize>(), 0..4),
        offers_train in any::<bool>(),
        max in 1u32..3,
    ) {
        let mut f = Fleet::new();
        for (i, (tenant, priority, advanced)) in jobs.iter().enumerate() {
            let j = f.job(&format!("j{i}"), &format!("t{tenant}"), *priority, "tiny-sd");
            if *advanced {
                f.drivers[j].run("validate").run("label");
            }
        }
        f.sync();
        for l in leased {
            let queued: Vec<_> = f.state.queued().map(|q| (q.job_id.clone(), q.step_id.clone())).collect();
            if queued.is_empty() { break; }
            let (job, step) = &queued[l % queued.len()];
            let idx = f.drivers.iter().position(|d| &d.job_id == job).unwrap();
            f.lease(idx, step.as_str(), "w");
        }
        // A job's place without the sort is its first step's in the sorted queue.
        let ordered = f.state.ordered_queue();
        for d in &f.drivers {
            prop_assert_eq!(
                f.state.queue_place(&d.job_id),
                ordered.iter().position(|q| q.job_id == d.job_id)
            );
        }
        let mut caps = cpu(&["validate_dataset", "label"]);
        if offers_train {
            caps.kinds.insert("train".into());
            caps.engines.insert(crate::catalogue::Engine::Native);
        }
        caps.max_concurrent_steps = max;
        let exec = ExecutorId::new("w");
        match f.state.pick(&exec, &caps, f.now()) {
            Some(s) => {
                prop_assert!(f.state.running_on(&exec) < max);
                prop_assert!(caps.satisfies(&s.kind, &s.requires, s.family));
                prop_assert!(s.not_before <= f.now());
                let first = f.state.ordered_queue().into_iter()
                    .find(|q| caps.satisfies(&q.kind, &q.requires, q.family)).unwrap();
                prop_assert_eq!(first, s);
            }
            None => {
                let eligible = f.state.queued().any(|q| caps.satisfies(&q.kind, &q.requires, q.family));
                prop_assert!(f.state.running_on(&exec) >= max || !eligible);
            }
        }
    }
}

#[test]
fn events_of_unknown_jobs_are_harmless() {
    let mut s = SchedulerState::new(Arc::new(Catalogue::builtin()));
    let events = crate::job::canned::histories::in_review();
    // Start mid-stream: the JobCreated is missing.
    for (i, e) in events.iter().enumerate().skip(1) {
        s.apply(i as u64 + 1, &JobId::new("x"), e);
    }
    assert!(matches!(events.last(), Some(JobEvent::ReviewRequested(_))));
    assert_eq!(s.queued().count(), 0);
}

fn picked_many(f: &Fleet, exec: &str, caps: &Capabilities, n: u32) -> Vec<String> {
    f.state
        .pick_many(&ExecutorId::new(exec), caps, f.now(), 0, 0, n, |_| false)
        .iter()
        .map(|s| s.job_id.to_string())
        .collect()
}

#[test]
fn a_batch_pick_serves_as_single_picks_would_and_stays_within_the_limit() {
    let mut f = Fleet::new();
    f.job("big-1", "bigco", 0, "sd15");
    f.job("big-2", "bigco", 0, "sd15");
    f.job("big-3", "bigco", 0, "sd15");
    f.job("small-1", "smallco", 0, "sd15");
    f.job("small-2", "smallco", 0, "sd15");
    let mut caps = cpu(&["validate_dataset"]);
    caps.max_concurrent_steps = 4;
    // Each pick counts as a lease of its tenant: the tenants alternate, as
    // four single polls with their leases recorded in between would go.
    let batch = picked_many(&f, "w", &caps, 10);
    assert_eq!(
        batch,
        ["big-1", "small-1", "big-2", "small-2"],
        "4 = the limit"
    );
    let mut singles = Vec::new();
    for _ in 0..4 {
        let (job, step) = picked(&f, "w", &caps).unwrap();
        let i = f
            .drivers
            .iter()
            .position(|d| d.job_id.as_str() == job)
            .unwrap();
        // A lease id of its own (the drivers each count from 1).
        let d = &mut f.drivers[i];
        d.exec(JobCommand::LeaseStep(LeaseStep {
            step_id: StepId::new(&step),
            lease_id: crate::ids::LeaseId::new(format!("{job}/{step}")),
            executor_id: ExecutorId::new("w"),
            instance: None,
        }))
        .unwrap();
        f.sync();
        singles.push(job);
    }
    assert_eq!(batch, singles);
    // The executor holds 4 of 4: nothing more, however many are asked for.
    assert_eq!(f.state.running_on(&ExecutorId::new("w")), 4);
    assert!(picked_many(&f, "w", &caps, 10).is_empty());
    // A completion that leases the next step frees its own slot, and only it.
    f.job("big-4", "bigco", 0, "sd15");
    let w = ExecutorId::new("w");
    let ending = |f: &Fleet, pending, n| {
        f.state
            .pick_many(&w, &caps, f.now(), pending, n, 10, |_| false)
            .len()
    };
    assert_eq!((ending(&f, 0, 1), ending(&f, 0, 2)), (1, 2));
    assert_eq!(
        ending(&f, 1, 1),
        0,
        "a claim pending fills the slot the completion frees"
    );
    // Another executor gets what is left, and never a step it cannot run.
    assert_eq!(picked_many(&f, "x", &caps, 10), ["big-3", "big-4"]);
    assert!(picked_many(&f, "x", &cpu(&["train"]), 10).is_empty());
    assert!(picked_many(&f, "x", &caps, 0).is_empty());
}

/// The serving order by brute force: every eligible step, the minimum of
/// (priority, the tenant's leases with this batch's picks, arrival) taken
/// once per pick. What the indexed [`SchedulerState::pick_many`] must equal.
#[allow(clippy::too_many_arguments)]
fn pick_many_by_scan<'a>(
    state: &'a SchedulerState,
    executor: &ExecutorId,
    caps: &Capabilities,
    now: chrono::DateTime<chrono::Utc>,
    pending: u32,
    ending: u32,
    n: u32,
    skip: impl Fn(&QueuedStep) -> bool,
) -> Vec<&'a QueuedStep> {
    let running_on = state
        .leases()
        .filter(|l| &l.executor_id == executor)
        .count() as u32;
    let held = (running_on + pending).saturating_sub(ending);
    let room = caps.max_concurrent_steps.saturating_sub(held).min(n) as usize;
    let mut running: std::collections::HashMap<&TenantId, usize> = Default::default();
    for l in state.leases() {
        *running.entry(&l.tenant).or_default() += 1;
    }
    let mut candidates: Vec<&QueuedStep> = state
        .queued()
        .filter(|s| s.runnable_by(caps, now) && !skip(s))
        .collect();
    let mut picked = Vec::new();
    while picked.len() < room {
        let Some((i, _)) = candidates.iter().enumerate().min_by_key(|(_, s)| {
            (
                std::cmp::Reverse(s.priority),
                running.get(&s.tenant).copied().unwrap_or(0),
                s.position,
            )
        }) else {
            break;
        };
        let step = candidates.swap_remove(i);
        *running.entry(&step.tenant).or_default() += 1;
        picked.push(step);
    }
    picked
}

/// [`SchedulerState::due`] by a scan of every lease and queued step.
fn due_by_scan(state: &SchedulerState, now: chrono::DateTime<chrono::Utc>) -> Vec<Action> {
    let mut actions: Vec<Action> = state
        .leases()
        .filter(|l| l.expires_at() <= now)
        .map(|l| Action::ExpireLease {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
        })
        .collect();
    for s in state.queued() {
        if let Some(limit) = state.schedule_to_start(&s.job_id, &s.step_id)
            && s.queued_at + Duration::from_std(limit).unwrap() <= now
        {
            actions.push(Action::ExpireQueued {
                job_id: s.job_id.clone(),
                step_id: s.step_id.clone(),
            });
        }
    }
    actions.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    actions
}

/// [`SchedulerState::next_wakeup`] by a scan of every lease and queued step.
fn next_wakeup_by_scan(
    state: &SchedulerState,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let leases = state.leases().map(|l| l.expires_at());
    let backoffs = state.queued().map(|s| s.not_before).filter(|t| *t > now);
    let queue_timeouts = state.queued().filter_map(|s| {
        let limit = state.schedule_to_start(&s.job_id, &s.step_id)?;
        Some(s.queued_at + Duration::from_std(limit).ok()?)
    });
    leases.chain(backoffs).chain(queue_timeouts).min()
}

proptest! {
    /// Whatever the queue (priorities, tenants, steps in backoff, leases
    /// held, jobs ended), a batch pick through the index hands out exactly
    /// the steps a scan of the whole queue would, in the same order; and the
    /// lease counts kept with the leases equal a count of them; what is
    /// due, and when, is what a scan of every deadline finds.
    #[test]
    fn the_indexed_pick_equals_a_scan_of_the_queue(
        jobs in proptest::collection::vec((0usize..4, -1i32..2, 0u8..4, 0u8..3), 1..16),
        leases in proptest::collection::vec((any::<usize>(), 0usize..3), 0..8),
        offers_train in any::<bool>(),
        skipped in proptest::collection::vec(any::<bool>(), 16),
        (max, pending, ending, n) in (1u32..8, 0u32..3, 0u32..2, 0u32..10),
        exec in 0usize..3,
    ) {
        let mut f = Fleet::new();
        for (i, (tenant, priority, stage, limit)) in jobs.iter().enumerate() {
            // Schedule-to-start: the template's default, none, or short.
            let limit = match limit {
                0 => None,
                1 => Some(std::time::Duration::from_secs(5 + i as u64)),
                _ => Some(crate::workflow::TemplateOptions::DEFAULT_SCHEDULE_TO_START),
            };
            let j = f.job_with(&format!("j{i:02}"), &format!("t{tenant}"), *priority, "tiny-sd", |w| {
                for s in &mut w.steps {
                    s.timeouts.schedule_to_start = limit;
                }
            });
            match stage {
                // A step failed and retried: queued again, in backoff.
                1 => {
                    f.lease(j, "validate", "w0");
                    let lease = f.drivers[j].job.step(&StepId::new("validate")).unwrap()
                        .current_lease().unwrap().clone();
                    f.drivers[j].exec(JobCommand::FailStep(crate::job::FailStep {
                        lease_id: lease,
                        error: crate::job::StepError {
                            kind: StepErrorKind::Unavailable,
                            message: "s3 down".into(),
                            retryable: true,
                        },
                    })).unwrap();
                }
                2 => { f.drivers[j].run("validate").run("label"); }
                // Ended: leaves nothing queued or leased.
                3 => {
                    f.lease(j, "validate", "w1");
                    f.drivers[j].exec(JobCommand::Cancel(crate::job::CancelJob {
                        reason: "test".into(),
                        cancelled_by: "test".into(),
                    })).unwrap();
                }
                _ => {}
            }
            f.sync();
        }
        for (l, e) in leases {
            let now = f.now();
            let queued: Vec<_> = f.state.queued().filter(|q| q.not_before <= now)
                .map(|q| (q.job_id.clone(), q.step_id.clone())).collect();
            if queued.is_empty() { break; }
            let (job, step) = &queued[l % queued.len()];
            let idx = f.drivers.iter().position(|d| &d.job_id == job).unwrap();
            f.lease(idx, step.as_str(), &format!("w{e}"));
        }
        let mut caps = cpu(&["validate_dataset", "label"]);
        if offers_train {
            caps.kinds.insert("train".into());
            caps.engines.insert(crate::catalogue::Engine::Native);
        }
        caps.max_concurrent_steps = max;
        let exec = ExecutorId::new(format!("w{exec}"));
        let skip = |s: &QueuedStep| {
            let i: usize = s.job_id.as_str()[1..].parse().unwrap();
            skipped[i]
        };
        let ids = |v: Vec<&QueuedStep>| {
            v.iter().map(|s| (s.job_id.to_string(), s.step_id.to_string())).collect::<Vec<_>>()
        };
        let now = f.now();
        prop_assert_eq!(
            ids(f.state.pick_many(&exec, &caps, now, pending, ending, n, skip)),
            ids(pick_many_by_scan(&f.state, &exec, &caps, now, pending, ending, n, skip))
        );
        // The timer's look-ups through the deadline index equal a scan.
        for later in [0, 3, 9, 20, 31 * 60] {
            let at = now + Duration::seconds(later);
            prop_assert_eq!(f.state.due(at), due_by_scan(&f.state, at));
            prop_assert_eq!(f.state.next_wakeup(at), next_wakeup_by_scan(&f.state, at));
        }
        for e in ["w0", "w1", "w2"] {
            let e = ExecutorId::new(e);
            prop_assert_eq!(
                f.state.running_on(&e) as usize,
                f.state.leases().filter(|l| l.executor_id == e).count()
            );
        }
    }
}

/// The step an outcome queues may go with the outcome to the executor that
/// reported it only when that executor has the slot (the one the outcome
/// frees) and can run the step, model included.
#[test]
fn an_outcome_s_next_step_follows_only_to_an_executor_that_can_run_it() {
    use crate::catalogue::Engine;
    use crate::executor::InstalledModel;
    let mut f = Fleet::new();
    let a = f.job("a", "acme", 0, "sd15");
    let job = JobId::new("a");
    let w = ExecutorId::new("w");
    // `step` leased to w and applied; its completion decided, not yet
    // applied (as when its outcome is being reported): what it queues.
    let queued_by = |f: &mut Fleet, step: &str| {
        let lease = f.drivers[a].next_lease_id();
        f.drivers[a]
            .exec(JobCommand::LeaseStep(LeaseStep {
                step_id: StepId::new(step),
                lease_id: lease.clone(),
                executor_id: ExecutorId::new("w"),
                instance: None,
            }))
            .unwrap();
        f.sync();
        let d = &mut f.drivers[a];
        let kind = d.job.step(&StepId::new(step)).expect("step").kind.clone();
        let events = d
            .exec(JobCommand::CompleteStep(crate::job::canned::outputs_for(
                &kind, lease,
            )))
            .unwrap();
        events
            .into_iter()
            .find_map(|e| match e {
                JobEvent::StepQueued(q) => Some(q),
                _ => None,
            })
            .expect("a step queued")
    };
    let label = queued_by(&mut f, "validate");
    let mut caps = cpu(&["validate_dataset", "label"]);
    caps.max_concurrent_steps = 1;
    let now = f.now();
    assert!(f.state.may_follow(&w, &caps, now, 0, 1, &job, &label));
    assert!(
        !f.state.may_follow(&w, &caps, now, 0, 0, &job, &label),
        "no slot unless the outcome frees one"
    );
    assert!(
        !f.state.may_follow(&w, &caps, now, 1, 1, &job, &label),
        "a claim pending takes the freed slot"
    );
    let validating_only = cpu(&["validate_dataset"]);
    assert!(
        !f.state
            .may_follow(&w, &validating_only, now, 0, 1, &job, &label)
    );
    // Training needs the job's base model installed (and a GPU).
    f.sync();
    let train = queued_by(&mut f, "label");
    let mut gpu = cpu(&["train"]);
    gpu.engines.insert(Engine::Native);
    gpu.gpu = true;
    gpu.vram_gb = 24;
    gpu.base_models = [InstalledModel::new(Engine::Native, "tiny-sd")].into();
    assert!(!f.state.may_follow(&w, &gpu, now, 0, 1, &job, &train));
    gpu.base_models
        .insert(InstalledModel::new(Engine::Native, "sd15"));
    assert!(f.state.may_follow(&w, &gpu, now, 0, 1, &job, &train));
}
