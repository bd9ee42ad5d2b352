//! A worker on "another machine": it shares only the artifact store with a
//! test server, and reaches the server over gRPC with the `gpu-1` executor
//! token. Tests add the executors it runs.

use std::sync::Arc;
use std::time::Duration;

use loraflow::core::executor::Capabilities;
use loraflow::core::ids::ExecutorId;
use loraflow::executors::worker::{GrpcWorkerApi, Worker, WorkerOptions};
use loraflow::executors::{ArtifactStore, Label, Publish, ValidateDataset, ValidateOptions};

use super::server::TestServer;

/// A one-step-at-a-time worker with the built-in validate, label and
/// publish executors; add `train` and `sample` ones.
pub fn remote_worker(server: &TestServer) -> Worker {
    let api = GrpcWorkerApi::connect(&format!("http://{}", server.addr), "e-gpu-1").unwrap();
    let artifacts =
        ArtifactStore::open(&server.tmp.path().join("artifacts").display().to_string()).unwrap();
    Worker::new(
        Arc::new(api),
        artifacts,
        WorkerOptions {
            executor_id: ExecutorId::new("gpu-1"),
            capabilities: Capabilities {
                max_concurrent_steps: 1,
                ..Capabilities::default()
            },
            workdir: server.tmp.path().join("worker"),
            max_backoff: Duration::from_millis(100),
        },
    )
    .with(Arc::new(ValidateDataset {
        options: ValidateOptions {
            min_side: 32,
            ..Default::default()
        },
    }))
    .with(Arc::new(Label::default()))
    .with(Arc::new(Publish {
        destination: format!("file://{}", server.tmp.path().join("published").display()),
    }))
}
