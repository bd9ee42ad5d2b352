//! The engine: one store, the projections, the scheduler, and (optionally)
//! in-process executors, behind one cheap-to-clone handle. The gRPC services
//! and the CLI are thin layers over it, so an embedding service gets the
//! same semantics without gRPC.

mod builder;
mod executors;
pub(crate) mod fleet;
mod fleet_view;
mod in_process;
mod jobs;
mod models;
mod restarts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use loraflow_core::ids::{JobId, LeaseId};
use loraflow_core::job::JobServices;
use loraflow_executors::ArtifactStore;
use loraflow_store::{Metadata, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use builder::EngineBuilder;
pub use executors::{LeaseInfo, Polled};
pub use fleet::FleetMember;
pub use fleet_view::{FleetEntry, FleetPage};
pub use in_process::InProcessApi;
pub use jobs::{JobView, NewJob};
pub use models::RegisterModel;

use crate::config::SchedulerConfig;
use crate::scheduler::Scheduler;

/// Metadata of a command issued by the engine itself.
pub(crate) fn system_metadata(actor: &str) -> Metadata {
    Metadata::from([("actor".to_owned(), actor.to_owned())])
}

#[derive(Debug, Default, Clone)]
struct Signals {
    save_now: bool,
    sample_now: bool,
    /// The settings of the last sample request, when it changed any.
    sample: Option<loraflow_core::sampling::SampleOverrides>,
}

/// What the engine remembers of a lease between heartbeats: when its last
/// progress was recorded (for throttling), and the first report (for ETAs).
#[derive(Debug, Clone)]
struct LeaseTrack {
    /// Global position of the `StepLeased` event.
    leased_at: u64,
    last_write: tokio::time::Instant,
    /// The epoch of the last progress recorded; `None` until one is.
    recorded_epoch: Option<Option<u32>>,
    first: Option<(tokio::time::Instant, u64)>,
    latest: Option<(tokio::time::Instant, u64)>,
    /// Repeated when a heartbeat only renews the lease.
    progress: Option<loraflow_core::job::StepProgress>,
}

pub(crate) struct Inner {
    store: Store,
    services: JobServices,
    artifacts: ArtifactStore,
    scheduler: Arc<Scheduler>,
    fleet: Arc<fleet::Fleet>,
    config: SchedulerConfig,
    leases: Mutex<HashMap<LeaseId, LeaseTrack>>,
    signals: Mutex<HashMap<JobId, Signals>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// Which URIs each tenant may name.
    tenancy: crate::tenancy::Tenancy,
}

/// A running engine. Clone it freely: every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store.backend_name())
            .finish()
    }
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The event store (for audits and tools).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    pub fn services(&self) -> &JobServices {
        &self.inner.services
    }

    /// A copy of the scheduler's working set now: open jobs, queued steps,
    /// live leases, and the feed position it has read (for audits and
    /// tests; it is rebuilt from the store at every start).
    pub fn scheduler_state(&self) -> loraflow_core::schedule::SchedulerState {
        self.inner.scheduler.read(Clone::clone)
    }

    /// Cancelled when the engine shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Stop the scheduler, projections, webhook delivery and in-process
    /// executors, and wait for them (webhook attempts in flight finish). Steps running in-process are cancelled and will be retried.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock poisoned"));
        for t in tasks {
            let _ = t.await;
        }
        self.inner.store.close().await;
    }
}
