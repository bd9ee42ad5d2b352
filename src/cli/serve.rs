//! `loraflow serve`: the engine and its gRPC server, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use loraflow::Engine;
use loraflow::config::Config;
use loraflow::core::catalogue::Catalogue;
use loraflow::executors::{Label, Publish, ValidateDataset};
use tokio_util::sync::CancellationToken;

use super::ConfigArg;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Event store: sqlite://path, sqlite::memory:, postgres://..., memory:.
    #[arg(long, env = "LORAFLOW_STORE")]
    pub store: Option<String>,
    /// Address to listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Artifact store root (a folder or URL).
    #[arg(long, env = "LORAFLOW_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Also run the built-in CPU executors in this process (validate_dataset,
    /// label, publish, and the native train/sample on CPU).
    #[arg(long)]
    pub with_executors: bool,
    /// Where `--with-executors` finds base models (folders named by model
    /// id; default: the checkout's `assets/`).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The native trainer's device: cpu, wgpu, vulkan or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

pub fn catalogue(config: &Config) -> anyhow::Result<Catalogue> {
    Ok(match &config.catalogue {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read catalogue {}", path.display()))?;
            Catalogue::from_toml_str(&text)
                .with_context(|| format!("catalogue {}", path.display()))?
        }
        None => Catalogue::builtin(),
    })
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Test hooks named in `FAILPOINTS` (docs/liveness.md); none without it.
    let _failpoints = fail::FailScenario::setup();
    let mut config = args.config.load()?;
    if let Some(s) = args.store {
        config.store.url = s;
    }
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(a) = args.artifacts {
        config.artifacts.root = a;
    }
    let mut builder = Engine::builder()
        .config(&config)
        .catalogue(catalogue(&config)?);
    if args.with_executors {
        builder = builder
            .executor(ValidateDataset::default())
            .executor(Label::default())
            .executor(Publish {
                destination: config.artifacts.publish_root.clone(),
            });
        let native = super::native::options(args.models.as_deref(), &args.device, None)?;
        builder = super::native::with_native(builder, &native)?;
    }
    let engine = builder
        .build()
        .await
        .with_context(|| format!("cannot open the store {}", config.store.url))?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    eprintln!(
        "loraflow serving on {} (store {})",
        listener.local_addr()?,
        config.store.url
    );
    let shutdown = shutdown_on_signals();
    let result = loraflow::grpc::serve(
        engine.clone(),
        loraflow::grpc::ServeOptions::from_config(&config),
        listener,
        shutdown,
    )
    .await;
    engine.shutdown().await;
    result.map_err(Into::into)
}
