//! Identifiers. Each is a distinct type so a step id can never be passed where
//! a lease id is expected; all serialise as plain strings.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

string_id!(
    /// A training job; also the aggregate id in the event store.
    JobId
);
string_id!(
    /// The tenant that owns a job. Tenants never see each other's jobs.
    TenantId
);
string_id!(
    /// A step of a workflow, unique within its workflow (`train`, `sample`, ...).
    StepId
);
string_id!(
    /// One lease of one attempt of a step to one executor. Completions and
    /// heartbeats name their lease, which makes them idempotent and lets stale
    /// ones be told apart from current ones.
    LeaseId
);
string_id!(
    /// An executor process (a worker on a GPU machine, or an in-process one).
    ExecutorId
);
string_id!(
    /// One process of an executor: a worker makes a fresh one each time it
    /// starts and sends it when it registers, so the server can tell a
    /// reconnect of the same process (its leases live on) from a restart
    /// (the old process's leases are dead and end at once).
    InstanceId
);
string_id!(
    /// A base model of the catalogue (`sd15`, `sdxl`, ...).
    BaseModelId
);
