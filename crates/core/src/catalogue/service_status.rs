//! Whether the service takes new jobs, and its admission limits.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::ids::BaseModelId;

/// What the operator currently allows. Checked when a job is created and when
/// its dataset is admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    pub available: bool,
    /// Shown to users when the service is unavailable or a model is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Base models temporarily closed to new jobs.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub blocked_models: BTreeSet<BaseModelId>,
    pub max_images: u32,
    pub max_dataset_bytes: u64,
    /// Upper bound on any step's attempts (first try included is `max_retries + 1`).
    pub max_retries: u32,
}

impl Default for ServiceStatus {
    fn default() -> Self {
        Self {
            available: true,
            message: None,
            blocked_models: BTreeSet::new(),
            max_images: 1000,
            max_dataset_bytes: 2 * 1024 * 1024 * 1024,
            max_retries: 3,
        }
    }
}

/// A shared, updatable [`ServiceStatus`]: an operator changes it at run time
/// and every later command sees the change.
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<RwLock<ServiceStatus>>);

impl StatusHandle {
    pub fn new(status: ServiceStatus) -> Self {
        Self(Arc::new(RwLock::new(status)))
    }

    pub fn get(&self) -> ServiceStatus {
        self.0.read().expect("status lock poisoned").clone()
    }

    pub fn set(&self, status: ServiceStatus) {
        *self.0.write().expect("status lock poisoned") = status;
    }

    pub fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        f(&mut self.0.write().expect("status lock poisoned"));
    }
}
