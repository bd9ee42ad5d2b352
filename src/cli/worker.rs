//! `loraflow worker`: run executors on this machine for a remote server. The
//! worker connects out; the machine needs no open port.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use loraflow::core::executor::Capabilities;
use loraflow::core::ids::ExecutorId;
use loraflow::executors::worker::{
    ArtifactAccess, GrpcWorkerApi, TransferClient, Worker, WorkerOptions,
};
use loraflow::executors::{Label, Publish, ValidateDataset};

use super::client::Exit;
use super::exit;
use super::serve::shutdown_on_signals;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Server URL.
    #[arg(
        long,
        env = "LORAFLOW_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// This executor's bearer token.
    #[arg(long, env = "LORAFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This executor's id (default: the host name).
    #[arg(long)]
    pub id: Option<String>,
    /// Step kinds to run: validate_dataset, label, train, sample, publish.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "validate_dataset,label,train,sample,publish"
    )]
    pub kinds: Vec<String>,
    /// This machine has a GPU.
    #[arg(long)]
    pub gpu: bool,
    #[arg(long)]
    pub gpu_name: Option<String>,
    /// GPU memory in GB.
    #[arg(long, default_value_t = 0)]
    pub vram_gb: u32,
    /// Steps run at once (a GPU runs one training at a time by default).
    #[arg(long, default_value_t = 1)]
    pub max_concurrent: u32,
    /// Capability labels (`region=eu`), repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Read and write the artifact store directly at this root (shared with
    /// the server). Unset (the default), every file travels through the
    /// server: the worker needs only `--server` and its token.
    #[arg(long, env = "LORAFLOW_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// How `--artifacts s3://...` reaches the bucket.
    #[command(flatten)]
    pub s3: super::s3_args::S3Args,
    /// Permanent storage for published LoRAs, with `--artifacts` (through
    /// the server, the server publishes to its own `publish_root`).
    #[arg(long, default_value = "loraflow-published")]
    pub publish_root: String,
    /// Scratch space.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Base models of the native trainer (folders named by model id;
    /// default: the checkout's `assets/`).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The native trainer's device: cpu, wgpu, vulkan or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A folder that outlives attempts: caches, and training states a
    /// retried attempt resumes from.
    #[arg(long)]
    pub native_work: Option<PathBuf>,
    /// A kohya sd-scripts configuration (TOML of `KohyaOptions`): adds the
    /// kohya engine for `train`, beside the native one. Each engine is
    /// checked at start; a broken one is refused (said on stderr) and the
    /// worker serves the others.
    #[arg(long)]
    pub kohya: Option<PathBuf>,
    /// An ai-toolkit configuration (TOML of `AiToolkitOptions`): enables the
    /// ai-toolkit engine for `train` (SDXL and FLUX.1 LoRAs).
    #[arg(long = "ai-toolkit", value_name = "OPTIONS_TOML")]
    pub ai_toolkit: Option<PathBuf>,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = args.token.clone().unwrap_or_default();
    let api = GrpcWorkerApi::connect(&args.server, &token)?;
    let artifacts: ArtifactAccess = match &args.artifacts {
        Some(root) => {
            let store = args.s3.open(root)?;
            // A missing bucket or refused credentials end the start, named.
            store.probe().await?;
            store.into()
        }
        None => TransferClient::connect(&args.server, &token)?.into(),
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()));
    let options = WorkerOptions {
        executor_id: ExecutorId::new(id.clone()),
        capabilities: Capabilities {
            gpu: args.gpu,
            gpu_name: args.gpu_name.clone(),
            vram_gb: args.vram_gb,
            max_concurrent_steps: args.max_concurrent,
            labels: args.labels.iter().cloned().collect(),
            ..Capabilities::default()
        },
        workdir: args
            .workdir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("loraflow-worker")),
        max_backoff: Duration::from_secs(30),
    };
    let mut worker = Worker::new(Arc::new(api), artifacts, options);
    for kind in &args.kinds {
        worker = match kind.as_str() {
            "validate_dataset" => worker.with(Arc::new(ValidateDataset::default())),
            "label" => worker.with(Arc::new(Label::default())),
            "publish" => worker.with(Arc::new(Publish {
                destination: args.publish_root.clone(),
            })),
            "train" | "sample" => worker,
            other => anyhow::bail!(
                "unknown step kind {other:?}; use validate_dataset, label, train, sample or publish"
            ),
        };
    }
    // Each engine is checked here: a broken one is refused (said on stderr,
    // not advertised) and the worker serves the rest.
    let mut refused: Vec<String> = Vec::new();
    if args.kinds.iter().any(|k| k == "train" || k == "sample") {
        let native = super::native::options(
            args.models.as_deref(),
            &args.device,
            args.native_work.clone(),
        )?;
        match native.check_install() {
            Ok(install) => {
                warn_skipped(&id, &install);
                worker = super::native::native_worker(worker, &native, &args.kinds)?;
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    if let Some(path) = &args.kohya {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let options: loraflow::executors::KohyaOptions = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid kohya configuration", path.display()))?;
        match options.check_install() {
            Ok(install) => {
                warn_skipped(&id, &install);
                worker = worker.with(Arc::new(loraflow::executors::KohyaTrainer::new(options)?));
            }
            Err(e) => refused.push(format!("{e} (configured in {})", path.display())),
        }
    }
    if let Some(path) = &args.ai_toolkit {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let options: loraflow::executors::AiToolkitOptions =
            toml::from_str(&text).with_context(|| {
                format!("{} is not a valid ai-toolkit configuration", path.display())
            })?;
        match loraflow::executors::aitoolkit::check_installation(&options) {
            Ok(_) => {
                worker = worker.with(Arc::new(loraflow::executors::AiToolkitTrainer::new(
                    options,
                )?));
            }
            Err(e) => refused.push(format!("{e} (configured in {})", path.display())),
        }
    }
    for reason in &refused {
        eprintln!("worker {id}: refused: {reason}");
    }
    if worker.is_empty() {
        anyhow::bail!(
            "worker {id} has nothing left to run: every engine it was given was refused (see above)"
        );
    }
    let caps = worker.capabilities();
    eprintln!(
        "worker {id} serving {:?} with engines {:?} for {} (artifacts {})",
        caps.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        caps.engines.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        args.server,
        match &args.artifacts {
            Some(root) => format!("in the store at {root}"),
            None => "through the server".to_owned(),
        }
    );
    for engine in &caps.engines {
        let models: Vec<&str> = caps.models_for(*engine).map(|m| m.as_str()).collect();
        if !models.is_empty() {
            eprintln!(
                "worker {id}: {engine} has base models {}",
                models.join(", ")
            );
        }
    }
    worker
        .serve(shutdown_on_signals())
        .await
        .map_err(|refused| {
            Exit(
                exit::UNREACHABLE,
                format!("{refused}\n  (check the executor token in --token / LORAFLOW_TOKEN and the [[auth.executors]] entry for this id on the server)"),
            )
        })?;
    Ok(())
}

/// Say which configured models of an engine are not ready, and why.
fn warn_skipped(id: &str, install: &loraflow::executors::Installation) {
    for reason in &install.skipped {
        eprintln!(
            "worker {id}: the {} engine skips a model: {reason}",
            install.engine
        );
    }
}
