//! The native executors on CPU, shared by `serve --with-executors`, `worker`
//! and `demo`.

use std::path::Path;

use loraflow::EngineBuilder;
use loraflow::executors::worker::Worker;

/// The in-process engine with the native train and sample executors.
pub fn with_native(builder: EngineBuilder, _models: &Path) -> anyhow::Result<EngineBuilder> {
    Ok(builder)
}

/// A worker with the native train and/or sample executors.
pub fn native_worker(_worker: Worker, _models: &Path, _kinds: &[String]) -> anyhow::Result<Worker> {
    anyhow::bail!(
        "this build has no native trainer; run the worker with --kinds validate_dataset,label,publish or --kohya"
    )
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
