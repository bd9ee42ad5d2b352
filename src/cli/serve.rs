//! `loraflow serve`: the engine and its gRPC server, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Also serve the HTTP/JSON API, the web console, `/metrics` and the
    /// health checks here (`127.0.0.1:8080`; default `[server] http_listen`).
    #[arg(long)]
    pub http: Option<SocketAddr>,
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
    /// After SIGTERM or SIGINT, the longest the server takes to stop
    /// (`10s`, `500ms`; default `[server] shutdown_grace`, else 10s): it
    /// stops accepting at once, ends open watch streams (clients reconnect),
    /// lets calls in flight finish, and exits when the grace is over.
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
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
    if let Some(h) = args.http {
        config.server.http_listen = Some(h);
    }
    if let Some(a) = args.artifacts {
        config.artifacts.root = a;
    }
    if let Some(g) = args.shutdown_grace {
        config.server.shutdown_grace = g;
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
    let engine = builder.build().await.with_context(|| {
        format!(
            "cannot start the engine (store {}, artifacts {})",
            config.store.url, config.artifacts.root
        )
    })?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    eprintln!(
        "loraflow serving on {} (store {})",
        listener.local_addr()?,
        config.store.url
    );
    let shutdown = shutdown_on_signals();
    let http = match config.server.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            let addr = listener.local_addr()?;
            eprintln!(
                "loraflow console at http://{addr}/ (HTTP API under /v1, metrics at /metrics)"
            );
            let options = loraflow::http::HttpOptions {
                auth: loraflow::grpc::auth::Auth::from_config(&config.auth),
                max_body_bytes: config.server.max_message_bytes,
                max_upload_bytes: config.server.max_upload_bytes,
                uploads: config.artifacts.transfer.clone(),
            };
            Some(tokio::spawn(loraflow::http::serve(
                engine.clone(),
                options,
                listener,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let server = loraflow::grpc::serve(
        engine.clone(),
        loraflow::grpc::ServeOptions::from_config(&config),
        listener,
        shutdown.clone(),
    );
    let served = stop_within_grace(&engine, server, &shutdown, config.server.shutdown_grace).await;
    if let Some(http) = http {
        // It stopped with the same token; event streams ended at once.
        match tokio::time::timeout(config.server.shutdown_grace, http).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server panicked"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
    }
    served
}

/// Run `server` until it returns; once `shutdown` is cancelled, give it and
/// the engine `grace` in all to stop. The engine is told at once, so long
/// polls end (`UNAVAILABLE`: workers retry elsewhere) and the scheduler stops
/// leasing; the server has already stopped accepting and ended watch
/// streams. Calls still running when the grace is over are dropped: their
/// clients see the connection close, and steps whose lease was in flight are
/// retried after their heartbeat timeout, as after a crash.
async fn stop_within_grace(
    engine: &Engine,
    server: impl std::future::Future<Output = Result<(), loraflow::grpc::ServeError>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut server = std::pin::pin!(server);
    let stopping = tokio::select! {
        result = &mut server => {
            // The server stopped by itself (an error): no grace to count.
            engine.shutdown().await;
            return result.map_err(Into::into);
        }
        () = shutdown.cancelled() => tokio::time::Instant::now(),
    };
    let deadline = stopping + grace;
    engine.shutdown_token().cancel();
    let served = match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "calls were still open when the shutdown grace ended; closing them"
            );
            Ok(())
        }
    };
    if tokio::time::timeout_at(deadline, engine.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "the engine had not stopped when the shutdown grace ended; exiting anyway"
        );
    }
    tracing::info!(took = ?stopping.elapsed(), "stopped");
    served.map_err(Into::into)
}
