//! Canned event histories and a command driver for tests (here and in other
//! crates, behind the `testing` feature). Histories are produced by running
//! real commands through [`TrainingJob::decide`], so they are always ones the
//! domain can produce.

use std::sync::Arc;

use chrono::Duration;

use super::*;
use crate::artifact::{Artifact, ArtifactKind, EpochOutput, Sha256};
use crate::catalogue::{Catalogue, Engine, Params};
use crate::clock::ManualClock;
use crate::ids::{ExecutorId, JobId, LeaseId, StepId, TenantId};
use crate::workflow::StepKind;

/// A valid spec: tenant `acme`, base model `sd15`, native engine.
pub fn sample_spec() -> JobSpec {
    JobSpec {
        tenant: TenantId::new("acme"),
        base_model: "sd15".into(),
        engine: Engine::Native,
        profile: None,
        params: Params::new(),
        dataset: DatasetRef {
            uri: "file:///datasets/corgi".into(),
            sha256: None,
        },
        sample_prompts: vec!["a corgi wearing a hat".into()],
        priority: 0,
        naming: Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        },
        labels: Default::default(),
        workflow: None,
        webhooks: Vec::new(),
    }
}

pub fn sample_dataset() -> AdmittedDataset {
    AdmittedDataset {
        image_count: 12,
        total_bytes: 3_400_000,
        manifest_sha256: Sha256::of(b"manifest"),
    }
}

/// An artifact whose digest is that of its name (stands for real bytes).
pub fn artifact(kind: ArtifactKind, name: &str, epoch: Option<u32>) -> Artifact {
    Artifact {
        kind,
        name: name.to_owned(),
        uri: format!("file:///artifacts/{name}"),
        sha256: Sha256::of(name.as_bytes()),
        size_bytes: name.len() as u64 * 1000,
        epoch,
    }
}

/// What an executor of `kind` plausibly returns.
pub fn outputs_for(kind: &StepKind, lease: LeaseId) -> CompleteStep {
    let mut c = CompleteStep {
        lease_id: lease,
        outputs: serde_json::Value::Null,
        artifacts: vec![],
        epochs: vec![],
    };
    match kind.as_str() {
        StepKind::VALIDATE_DATASET => {
            c.artifacts
                .push(artifact(ArtifactKind::Manifest, "manifest.json", None))
        }
        StepKind::LABEL => c
            .artifacts
            .push(artifact(ArtifactKind::Labels, "labels.json", None)),
        StepKind::TRAIN => {
            c.epochs = (1..=2)
                .map(|e| EpochOutput {
                    epoch: e,
                    lora: Some(artifact(
                        ArtifactKind::Lora,
                        &format!("corgi-e{e}.safetensors"),
                        Some(e),
                    )),
                    samples: vec![],
                    loss: Some(0.2 / e as f64),
                    ..Default::default()
                })
                .collect()
        }
        StepKind::SAMPLE => {
            c.epochs = (1..=2)
                .map(|e| EpochOutput {
                    epoch: e,
                    lora: None,
                    samples: vec![artifact(
                        ArtifactKind::Sample,
                        &format!("e{e}-0.png"),
                        Some(e),
                    )],
                    loss: None,
                    ..Default::default()
                })
                .collect()
        }
        StepKind::PUBLISH => c.artifacts.push(artifact(
            ArtifactKind::Published,
            "corgi-v1.safetensors",
            None,
        )),
        _ => {}
    }
    c
}

/// Runs commands against one job, keeping its events; time moves only when told.
pub struct Driver {
    pub services: JobServices,
    pub clock: Arc<ManualClock>,
    pub job: TrainingJob,
    pub events: Vec<JobEvent>,
    pub job_id: JobId,
    leases: u32,
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver {
    pub fn new() -> Self {
        Self::with_catalogue(Catalogue::builtin())
    }

    pub fn with_catalogue(catalogue: Catalogue) -> Self {
        let clock = Arc::new(ManualClock::at_epoch());
        Self {
            services: JobServices::new(catalogue).with_clock(clock.clone()),
            clock,
            job: TrainingJob::default(),
            events: Vec::new(),
            job_id: JobId::new("job-1"),
            leases: 0,
        }
    }

    /// Decide and apply; the events are kept.
    pub fn exec(&mut self, command: JobCommand) -> Result<Vec<JobEvent>, Error> {
        let events = self.job.decide(command, &self.services)?;
        for e in &events {
            cqrs_es::Aggregate::apply(&mut self.job, e.clone());
        }
        self.events.extend(events.iter().cloned());
        Ok(events)
    }

    pub fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn create_with(&mut self, spec: JobSpec) -> &mut Self {
        let job_id = self.job_id.clone();
        self.exec(JobCommand::Create(CreateJob { job_id, spec }))
            .expect("create");
        self
    }

    pub fn create(&mut self) -> &mut Self {
        self.create_with(sample_spec())
    }

    pub fn submit(&mut self) -> &mut Self {
        self.exec(JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }))
        .expect("submit");
        self
    }

    pub fn next_lease_id(&mut self) -> LeaseId {
        self.leases += 1;
        LeaseId::new(format!("lease-{}", self.leases))
    }

    pub fn lease(&mut self, step: &str) -> LeaseId {
        let lease_id = self.next_lease_id();
        self.exec(JobCommand::LeaseStep(LeaseStep {
            step_id: StepId::new(step),
            lease_id: lease_id.clone(),
            executor_id: ExecutorId::new("gpu-0"),
            instance: None,
        }))
        .unwrap_or_else(|e| panic!("lease {step}: {e}"));
        lease_id
    }

    pub fn complete(&mut self, step: &str, lease: LeaseId) -> &mut Self {
        let kind = self
            .job
            .step(&StepId::new(step))
            .expect("step")
            .kind
            .clone();
        self.exec(JobCommand::CompleteStep(outputs_for(&kind, lease)))
            .unwrap_or_else(|e| panic!("complete {step}: {e}"));
        self
    }

    /// Lease and complete one step.
    pub fn run(&mut self, step: &str) -> &mut Self {
        let lease = self.lease(step);
        self.complete(step, lease)
    }

    pub fn run_to_review(&mut self) -> &mut Self {
        self.create().submit();
        for s in ["validate", "label", "train", "sample"] {
            self.run(s);
        }
        self
    }

    pub fn approve(&mut self, epoch: u32) -> &mut Self {
        self.exec(JobCommand::Approve(ApproveJob {
            epoch,
            step: None,
            approved_by: "reviewer@acme".into(),
        }))
        .expect("approve");
        self
    }
}

/// Named histories, each listing its events.
pub mod histories {
    use super::*;

    /// JobCreated.
    pub fn created() -> Vec<JobEvent> {
        Driver::new().create().events.clone()
    }

    /// JobCreated, JobSubmitted, StepQueued(validate).
    pub fn submitted() -> Vec<JobEvent> {
        Driver::new().create().submit().events.clone()
    }

    /// JobCreated, JobSubmitted, StepQueued(validate), StepLeased(validate, `lease-1`).
    pub fn processing() -> Vec<JobEvent> {
        let mut d = Driver::new();
        d.create().submit();
        d.lease("validate");
        d.events
    }

    /// Through validate, label, train and sample to ReviewRequested with two epochs.
    pub fn in_review() -> Vec<JobEvent> {
        Driver::new().run_to_review().events.clone()
    }

    /// Epoch 2 approved; the publish step is queued.
    pub fn approved() -> Vec<JobEvent> {
        let mut d = Driver::new();
        d.run_to_review().approve(2);
        d.events
    }

    /// In review, then rejected by the reviewer.
    pub fn rejected() -> Vec<JobEvent> {
        let mut d = Driver::new();
        d.run_to_review();
        d.exec(JobCommand::Reject(RejectJob {
            reason: "the samples are blurry".into(),
            rejected_by: "reviewer@acme".into(),
        }))
        .expect("reject");
        d.events
    }

    /// The whole happy path to JobPublished (epoch 2 approved).
    pub fn published() -> Vec<JobEvent> {
        let mut d = Driver::new();
        d.run_to_review().approve(2).run("publish");
        d.events
    }

    /// Cancelled while the train step held a lease.
    pub fn cancelled_while_training() -> Vec<JobEvent> {
        let mut d = Driver::new();
        d.create().submit().run("validate").run("label");
        d.lease("train");
        d.exec(JobCommand::Cancel(CancelJob {
            reason: "wrong dataset".into(),
            cancelled_by: "alice".into(),
        }))
        .expect("cancel");
        d.events
    }
}
