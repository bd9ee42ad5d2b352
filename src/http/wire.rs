//! The JSON answers of the HTTP API. Domain types travel in their serde form
//! (the same as in the event store and `--json` CLI output); the shapes
//! here add what the gRPC `Job` adds around them (name, etag, queue
//! position, ETA).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use loraflow_core::catalogue::{BaseModel, EffectiveParam, ParamValue, Params, ServiceStatus};
use loraflow_core::executor::Capabilities;
use loraflow_core::job::{JobEvent, JobSpec};
use loraflow_core::views::JobStatus;
use loraflow_core::webhook::{Delivery, DeliveryAttempt};
use loraflow_store::StoredEvent;
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::{FleetEntry, JobView};

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// `jobs/{job_id}`.
    pub name: String,
    /// Quote it in `etag` to act only on this version of the job.
    pub etag: String,
    /// 0 = the next step leased, among all queued steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Seconds left in the running step, from its measured pace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// Queued steps no connected executor could run, with what is missing.
    pub waiting_for: BTreeMap<String, String>,
    /// State, steps, progress, epochs (with their samples and losses),
    /// artifacts: the job's status view.
    pub status: JobStatus,
}

impl From<JobView> for Job {
    fn from(v: JobView) -> Self {
        Self {
            name: loraflow_proto::aip::job_name(&v.status.job_id),
            etag: loraflow_proto::aip::etag(v.status.sequence),
            queue_position: v.queue_position,
            eta_seconds: v.eta.map(|d| d.as_secs_f64()),
            waiting_for: v
                .waiting_for
                .iter()
                .map(|(step, u)| (step.to_string(), u.to_string()))
                .collect(),
            status: v.status,
        }
    }
}

/// `validate_only`: the job as it would be created; nothing was written.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidJob {
    pub valid: bool,
    pub spec: JobSpec,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass it as `page_token` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One event of a job's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    /// The global position: `Last-Event-ID` of the event stream.
    pub position: u64,
    /// The job's own sequence number (the etag after this event).
    pub sequence: u64,
    pub job_id: String,
    /// `JobCreated`, `StepProgressed`, ...
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    /// The event, in its stored JSON form: `{"<event_type>": {...}}`.
    #[schema(value_type = JobEvent)]
    pub payload: serde_json::Value,
    /// Its metadata (tenant, request id, hash chain).
    // Left open: the store keeps whatever string keys its writers put there
    // (other tools' events too), and readers take the keys they know.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl Event {
    pub fn of(e: &StoredEvent) -> Result<Self, serde_json::Error> {
        Ok(Self {
            position: e.position,
            sequence: e.sequence,
            job_id: e.job_id.to_string(),
            event_type: e.event_type.clone(),
            recorded_at: e.recorded_at,
            payload: serde_json::to_value(&e.payload)?,
            metadata: serde_json::to_value(&e.metadata)?,
        })
    }
}

/// A job's whole log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub events: Vec<Event>,
}

/// The base models of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct BaseModels {
    pub base_models: Vec<BaseModel>,
}

/// The parameters as they apply to one base model and engine, and every
/// profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParameterSchema {
    pub params: Vec<EffectiveParam>,
    /// Each profile's parameter values, by profile name.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, ParamValue>>)]
    pub profiles: BTreeMap<String, Params>,
}

/// The service's state and where the caller uploads datasets.
#[derive(Debug, Serialize, ToSchema)]
pub struct Service {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_root: Option<String>,
    pub status: ServiceStatus,
}

/// One connected executor, as the caller may see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Executor {
    pub executor_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub capabilities: Capabilities,
    pub register_time: DateTime<Utc>,
    pub last_seen_time: DateTime<Utc>,
    /// Steps of the caller's jobs it holds now.
    pub leases: Vec<Lease>,
    /// How many steps of other tenants' jobs it holds.
    pub other_tenants_leases: u32,
}

/// A step an executor holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lease {
    pub job_id: String,
    pub step_id: String,
}

impl From<FleetEntry> for Executor {
    fn from(e: FleetEntry) -> Self {
        let m = e.member;
        Self {
            executor_id: m.executor_id.to_string(),
            instance_id: m.instance.map(|i| i.to_string()),
            capabilities: m.capabilities,
            register_time: m.registered_at,
            last_seen_time: m.last_seen,
            leases: m
                .leases
                .into_iter()
                .map(|(job, step)| Lease {
                    job_id: job.to_string(),
                    step_id: step.to_string(),
                })
                .collect(),
            other_tenants_leases: e.other_tenants_leases,
        }
    }
}

/// A page of the fleet.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutorPage {
    pub executors: Vec<Executor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One event to one webhook URL, with every attempt made for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    pub delivery: Delivery,
    pub attempts: Vec<DeliveryAttempt>,
}

/// A page of a job's webhook deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<WebhookDelivery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A dataset uploaded with `POST /v1/datasets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dataset {
    /// What a job's `dataset.uri` names.
    pub uri: String,
    /// The SHA-256 of the manifest (name, size, digest of every file): the
    /// dataset's folder.
    pub manifest_sha256: String,
    pub files: usize,
    pub bytes: u64,
    /// Files written now; 0 when the same dataset was uploaded before.
    pub uploaded: usize,
}
