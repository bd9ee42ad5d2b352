//! The gRPC server: `JobService` for clients, `ExecutorService` for workers,
//! `ArtifactService` for files (both),
//! health checking and reflection, message size limits, optional TLS.

use std::time::Duration;

use loraflow_proto::pb::v1::artifact_service_server::ArtifactServiceServer;
use loraflow_proto::pb::v1::executor_service_server::ExecutorServiceServer;
use loraflow_proto::pb::v1::job_service_server::JobServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::artifacts::Artifacts;
use super::auth::Auth;
use super::executors::Executors;
use super::jobs::Jobs;
use crate::config::{Config, TlsConfig};
use crate::engine::Engine;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read TLS {what} {path}: {source}")]
    Tls {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// What the server needs besides the engine.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub auth: Auth,
    pub max_message_bytes: usize,
    pub tls: Option<TlsConfig>,
    /// The longest a `PollStep` may wait.
    pub max_poll: Duration,
    /// `ArtifactService`: where published LoRAs go, transfer limits.
    pub transfer: crate::transfer::TransferOptions,
}

impl ServeOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            auth: Auth::from_config(&config.auth),
            max_message_bytes: config.server.max_message_bytes,
            tls: config.server.tls.clone(),
            max_poll: config.scheduler.poll_timeout,
            transfer: crate::transfer::TransferOptions {
                publish_root: config.artifacts.publish_root.clone(),
                limits: config.artifacts.transfer.clone(),
                staging_dir: None,
            },
        }
    }
}

/// tonic 0.14 answers a message over its size limits with `OUT_OF_RANGE`,
/// decoding a request and encoding a response alike (`codec/decode.rs` and
/// `codec/encode.rs` build the status themselves; no setting chooses the
/// code). The API promises `RESOURCE_EXHAUSTED`, as gRPC's own status-code
/// table does for size limits. No handler of this server returns
/// `OUT_OF_RANGE` (the `never_out_of_range` test of `status.rs` holds the
/// error mapping to that), so every `OUT_OF_RANGE` leaving it is a size
/// limit: the rewrite keys on the code alone, not on tonic's wording.
fn oversized_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11")
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// Serve on `listener` until `shutdown`; then stop taking calls, end open
/// `WatchJob` streams with `UNAVAILABLE` (their clients reconnect and resume
/// from the last position they saw), finish the calls in flight, and return.
/// A `PollStep` in flight waits out its poll unless the engine is shutting
/// down too; `loraflow serve` stops both and bounds the whole by
/// `[server] shutdown_grace`.
pub async fn serve(
    engine: Engine,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    if options.auth.is_open() {
        tracing::warn!(
            "no tokens configured: the server is OPEN (every client is tenant `default`, every executor trusted); configure [auth] before exposing it"
        );
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<Jobs>>()
        .await;
    health_reporter
        .set_serving::<ExecutorServiceServer<Executors>>()
        .await;
    health_reporter
        .set_serving::<ArtifactServiceServer<Artifacts>>()
        .await;
    // Both versions of reflection: grpcurl and grpc_cli ask v1, but many
    // tools (older grpcurl, Postman, Evans, Kreya) ask v1alpha first and
    // give up on UNIMPLEMENTED.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(loraflow_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;

    let max = options.max_message_bytes;
    let jobs = JobServiceServer::new(Jobs {
        engine: engine.clone(),
        auth: options.auth.clone(),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let executors = ExecutorServiceServer::new(Executors {
        engine: engine.clone(),
        auth: options.auth.clone(),
        max_poll: options.max_poll,
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    // Chunks are at most 1 MiB; the message limit leaves room for them
    // whatever `max_message_bytes` says.
    let chunk_max = max.max(loraflow_executors::artifact_stream::CHUNK_BYTES + 64 * 1024);
    let artifacts = ArtifactServiceServer::new(Artifacts {
        transfers: crate::transfer::Transfers::new(engine.clone(), options.transfer.clone()),
        auth: options.auth.clone(),
    })
    .max_decoding_message_size(chunk_max)
    .max_encoding_message_size(chunk_max);

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ));
    if let Some(tls) = &options.tls {
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ServeError::Tls {
                what,
                path: path.to_owned(),
                source,
            })
        };
        crate::tls::use_ring();
        let identity = Identity::from_pem(read("certificate", &tls.cert)?, read("key", &tls.key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = options.tls.is_some(), "serving gRPC");
    let stop = shutdown.clone();
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(executors)
        .add_service(artifacts)
        // Small request/response pairs: Nagle's algorithm with delayed ACKs
        // would hold each for tens of milliseconds.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move { stop.cancelled().await },
        )
        .await?;
    health_reporter
        .set_not_serving::<JobServiceServer<Jobs>>()
        .await;
    Ok(())
}
