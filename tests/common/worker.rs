//! A worker on "another machine": it shares only the artifact store with a
//! test server, and reaches the server over gRPC with an executor token
//! (`gpu-N` holds `e-gpu-N`). Tests add the executors it runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loraflow::core::executor::Capabilities;
use loraflow::core::ids::ExecutorId;
use loraflow::executors::worker::{GrpcWorkerApi, Worker, WorkerOptions};
use loraflow::executors::{ArtifactStore, Label, Publish, ValidateDataset, ValidateOptions};

use super::server::TestServer;

/// A one-step-at-a-time worker `gpu-1` with the built-in validate, label
/// and publish executors; add `train` and `sample` ones.
pub fn remote_worker(server: &TestServer) -> Worker {
    let root = server.tmp.path();
    bare_worker(server.addr, root, 1, 1)
        .with(Arc::new(ValidateDataset {
            options: ValidateOptions {
                min_side: 32,
                ..Default::default()
            },
        }))
        .with(Arc::new(Label::default()))
        .with(Arc::new(Publish {
            destination: format!("file://{}", root.join("published").display()),
        }))
}

/// Worker `gpu-{n}` with no executors, running up to `slots` steps at once,
/// against the server at `addr` and the artifacts under `root`.
pub fn bare_worker(addr: SocketAddr, root: &Path, n: u32, slots: u32) -> Worker {
    bare_worker_polling(addr, root, n, slots, true)
}

/// [`bare_worker`] whose slots poll for one step each (`PollStep`) unless
/// `batch`, when one poll leases a step for every free slot (`PollSteps`).
pub fn bare_worker_polling(
    addr: SocketAddr,
    root: &Path,
    n: u32,
    slots: u32,
    batch: bool,
) -> Worker {
    let mut api = GrpcWorkerApi::connect(&format!("http://{addr}"), &format!("e-gpu-{n}")).unwrap();
    if !batch {
        api = api.one_step_per_poll();
    }
    let artifacts = ArtifactStore::open(&root.join("artifacts").display().to_string()).unwrap();
    Worker::new(
        Arc::new(api),
        artifacts,
        WorkerOptions {
            executor_id: ExecutorId::new(format!("gpu-{n}")),
            capabilities: Capabilities {
                max_concurrent_steps: slots,
                ..Capabilities::default()
            },
            workdir: root.join(format!("worker-{n}")),
            max_backoff: Duration::from_millis(100),
        },
    )
}
