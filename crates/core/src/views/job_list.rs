//! What a job list shows for each job, and how a list is filtered. Stores
//! translate [`JobListFilter`] to their own queries; [`JobListFilter::matches`]
//! is the reference they are tested against.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::JobStatus;
use crate::catalogue::Engine;
use crate::ids::{BaseModelId, JobId, TenantId};
use crate::job::{FailureReason, JobState, Naming};

/// One line of a job list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub tenant: TenantId,
    pub base_model: BaseModelId,
    pub engine: Engine,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    pub priority: i32,
    pub naming: Naming,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sequence: u64,
}

impl From<&JobStatus> for JobSummary {
    fn from(s: &JobStatus) -> Self {
        Self {
            job_id: s.job_id.clone(),
            tenant: s.tenant.clone(),
            base_model: s.base_model.clone(),
            engine: s.engine,
            state: s.state,
            failure_reason: s.failure.as_ref().map(|f| f.reason),
            priority: s.priority,
            naming: s.naming.clone(),
            labels: s.labels.clone(),
            current_epoch: s.current_epoch,
            created_at: s.created_at,
            updated_at: s.updated_at,
            sequence: s.sequence,
        }
    }
}

/// Which jobs a list shows; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<BaseModelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Labels the job must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl JobListFilter {
    pub fn matches(&self, s: &JobStatus) -> bool {
        self.tenant.as_ref().is_none_or(|t| t == &s.tenant)
            && self.state.is_none_or(|st| st == s.state)
            && self.base_model.as_ref().is_none_or(|m| m == &s.base_model)
            && self.engine.is_none_or(|e| e == s.engine)
            && self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    }
}

/// The list order: newest first, then by job id (descending) so that the
/// order is total and a keyset cursor can resume it.
pub fn list_order(a: &JobStatus, b: &JobStatus) -> std::cmp::Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| b.job_id.cmp(&a.job_id))
}
