//! Logs and traces. Logs go to stderr, filtered by `RUST_LOG`. When an
//! OTLP collector is configured, the spans of requests (`http`, `grpc`) and
//! steps (`step`) are also exported to it over gRPC, batched on the tokio
//! runtime; nothing configured, nothing is exported.
//!
//! Where the collector is: the configuration file's
//! `[telemetry] otlp_endpoint` (`loraflow serve`), else the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
//! The service name: `[telemetry] service_name`, else `OTEL_SERVICE_NAME`,
//! else the command's own (`loraflow`, `loraflow-worker`).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// The longest an export may take; a dead collector costs at most this.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest exit waits for the last spans to go out.
pub const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot start the OTLP exporter to {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// Where spans go: the collector and the name this process has there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub endpoint: String,
    pub service_name: String,
}

/// Checks an OTLP endpoint: an `http://` or `https://` URL with a host.
/// `field` names where it came from.
pub fn check_endpoint(field: &'static str, value: &str) -> Result<(), TelemetryError> {
    let invalid = |why: &str| TelemetryError::Invalid {
        field,
        message: format!(
            "{why}; got {value:?}, allowed: an http:// or https:// URL of an OTLP/gRPC collector such as http://127.0.0.1:4317"
        ),
    };
    let url = url::Url::parse(value).map_err(|e| invalid(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
}

/// A service name: 1 to [`MAX_SERVICE_NAME`] characters.
pub fn check_service_name(field: &'static str, value: &str) -> Result<(), TelemetryError> {
    let n = value.chars().count();
    if n == 0 || n > MAX_SERVICE_NAME || value.chars().any(char::is_control) {
        return Err(TelemetryError::Invalid {
            field,
            message: format!(
                "got {value:?} ({n} characters); allowed: 1 to {MAX_SERVICE_NAME} characters, no control characters"
            ),
        });
    }
    Ok(())
}

/// The longest service name.
pub const MAX_SERVICE_NAME: usize = 255;

/// A variable of the environment, unless unset or empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Export {
    /// What `config` and the environment say; `None` when no endpoint is
    /// configured. `default_name` is the command's service name.
    pub fn resolve(
        config: &TelemetryConfig,
        default_name: &str,
    ) -> Result<Option<Self>, TelemetryError> {
        let endpoint = match &config.otlp_endpoint {
            Some(e) => {
                check_endpoint("telemetry.otlp_endpoint", e)?;
                e.clone()
            }
            None => match (
                env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                env("OTEL_EXPORTER_OTLP_ENDPOINT"),
            ) {
                (Some(e), _) => {
                    check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &e)?;
                    e
                }
                (None, Some(e)) => {
                    check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?;
                    e
                }
                (None, None) => return Ok(None),
            },
        };
        let service_name = match &config.service_name {
            Some(n) => {
                check_service_name("telemetry.service_name", n)?;
                n.clone()
            }
            None => match env("OTEL_SERVICE_NAME") {
                Some(n) => {
                    check_service_name("OTEL_SERVICE_NAME", &n)?;
                    n
                }
                None => default_name.to_owned(),
            },
        };
        Ok(Some(Self {
            endpoint,
            service_name,
        }))
    }
}

/// Trace export while it runs; [`Tracing::shutdown`] sends what is left.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// The exporter and its batch processor (on the current tokio runtime).
fn provider(export: &Export) -> Result<SdkTracerProvider, TelemetryError> {
    let failed = |message: String| TelemetryError::Exporter {
        endpoint: export.endpoint.clone(),
        message,
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(export.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT);
    if export.endpoint.starts_with("https://") {
        builder =
            builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
    }
    let exporter = builder.build().map_err(|e| failed(e.to_string()))?;
    let batch = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            Resource::builder()
                .with_service_name(export.service_name.clone())
                .build(),
        )
        .build())
}

/// Which spans are exported: the project's at `info` and above, none of
/// the transport's (the exporter's own calls would otherwise trace
/// themselves).
fn exported() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("sqlx", LevelFilter::WARN)
}

/// Install the process' subscriber: logs on stderr filtered by `RUST_LOG`
/// (else `default_filter`), and spans exported as `export` says. Must run
/// inside the tokio runtime when `export` is given. If the exporter cannot
/// start, logs are installed alone and the error is returned.
pub fn init(
    default_filter: &str,
    export: Option<&Export>,
) -> Result<Option<Tracing>, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = match export.map(provider).transpose() {
        Ok(p) => p,
        Err(e) => {
            tracing_subscriber::registry().with(logs).init();
            return Err(e);
        }
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("loraflow"))
            .with_filter(exported())
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(provider.zip(export).map(|(provider, e)| {
        tracing::info!(endpoint = %e.endpoint, service = %e.service_name, "exporting traces over OTLP");
        Tracing {
            provider,
            endpoint: e.endpoint.clone(),
        }
    }))
}

impl Tracing {
    /// Send the spans still batched and stop, waiting at most
    /// [`FLUSH_WAIT`]: a collector that does not answer never holds up exit.
    pub async fn shutdown(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let provider = self.provider;
        // The SDK blocks its caller until the batch task (on this runtime)
        // has exported; a thread of its own keeps the runtime free for it.
        let spawned = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                let _ = tx.send(provider.shutdown());
            });
        if spawned.is_err() {
            return;
        }
        match tokio::time::timeout(FLUSH_WAIT, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "the last spans were not exported")
            }
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                endpoint = %self.endpoint,
                "the OTLP collector did not take the last spans within {FLUSH_WAIT:?}; exiting without them"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_named() {
        assert!(check_endpoint("telemetry.otlp_endpoint", "http://127.0.0.1:4317").is_ok());
        assert!(
            check_endpoint("telemetry.otlp_endpoint", "https://collector.example:4317").is_ok()
        );
        let e = check_endpoint("telemetry.otlp_endpoint", "ftp://x:1")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("telemetry.otlp_endpoint: scheme ftp"), "{e}");
        assert!(e.contains("\"ftp://x:1\""), "{e}");
        let e = check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost 4317")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: not a URL"),
            "{e}"
        );
    }

    #[test]
    fn service_names_are_bounded() {
        assert!(check_service_name("telemetry.service_name", "loraflow-eu").is_ok());
        let e = check_service_name("telemetry.service_name", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 255 characters"), "{e}");
        assert!(check_service_name("telemetry.service_name", &"x".repeat(256)).is_err());
    }

    #[test]
    fn the_file_wins_over_the_environment_default() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://10.0.0.1:4317".into()),
            service_name: Some("trainer-eu".into()),
        };
        let e = Export::resolve(&config, "loraflow").unwrap().unwrap();
        assert_eq!(e.endpoint, "http://10.0.0.1:4317");
        assert_eq!(e.service_name, "trainer-eu");
    }
}
