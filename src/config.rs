//! `loraflow.toml`: the engine's configuration. Every section is optional;
//! the defaults run an embedded engine on SQLite in the current directory.
//!
//! ```toml
//! [store]
//! url = "postgres://loraflow@db/loraflow"
//!
//! [artifacts]
//! root = "s3://training-artifacts/loraflow"
//! publish_root = "s3://public-loras/published"
//!
//! [artifacts.transfer]   # files through the server (README: how artifacts travel)
//! max_file_bytes = 17179869184
//! max_dataset_files = 10000
//! session_ttl = "1h"
//!
//! [server]
//! listen = "0.0.0.0:50051"
//! http_listen = "0.0.0.0:8080"   # HTTP/JSON API, web console, /metrics
//! shutdown_grace = "10s"   # SIGTERM: stop within this
//! tls = { cert = "/etc/loraflow/tls.crt", key = "/etc/loraflow/tls.key" }
//!
//! [[auth.tenants]]
//! tenant = "acme"
//! token = "…"
//! webhook_secret = "…"   # signs the tenant's webhook requests
//! # datasets the tenant may name besides its uploads (docs/limits.md)
//! allowed_roots = ["file:///srv/data/acme/", "s3://bucket/acme/"]
//!
//! [limits]               # every input's limit (docs/limits.md)
//! subject_chars = 100
//!
//! [webhooks]
//! max_backoff = "5m"
//!
//! [[auth.executors]]
//! executor = "gpu-node-1"
//! token = "…"
//!
//! [telemetry]            # OTLP trace export (docs/http.md)
//! otlp_endpoint = "http://otel-collector:4317"
//! service_name = "loraflow"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid loraflow configuration: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub artifacts: ArtifactsConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub scheduler: SchedulerConfig,
    pub webhooks: WebhooksConfig,
    pub audit: AuditConfig,
    /// Limits on every input (sizes, counts, nesting); see `docs/limits.md`.
    pub limits: loraflow_core::limits::Limits,
    /// A catalogue file replacing the built-in one (same shape as the
    /// built-in `default.toml`).
    pub catalogue: Option<PathBuf>,
    /// OpenTelemetry trace export.
    pub telemetry: TelemetryConfig,
}

/// Where the spans of requests and steps are exported (`crate::telemetry`).
/// Unset, the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` apply; none of them,
/// nothing is exported.
///
/// ```toml
/// [telemetry]
/// otlp_endpoint = "http://otel-collector:4317"   # OTLP over gRPC
/// service_name = "loraflow-eu"                   # default `loraflow`
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector: `http://host:4317` or `https://...`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    pub service_name: Option<String>,
}

/// The signed audit log (`docs/audit.md`).
///
/// ```toml
/// [audit]
/// signing_key = "/etc/loraflow/audit.key"      # `loraflow audit keygen --out FILE`
/// trusted_keys = ["/etc/loraflow/audit-2025.pub", "3b6a27bc…(64 hex digits)"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A PKCS#8 PEM file holding the Ed25519 key that signs events, job
    /// heads and feed checkpoints. Unset: a SQLite store keeps its key in
    /// `<file>.audit-key` (created on first start), a PostgreSQL store in
    /// `<artifacts root>.audit-key` when the artifact root is a local
    /// folder; servers that share a database must share the key.
    pub signing_key: Option<PathBuf>,
    /// Public keys that verify besides the signing key's (the keys of
    /// earlier rotations): SPKI PEM files, or 64 hex digits.
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path`, `sqlite::memory:`, `postgres://...`, or `memory:`.
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://loraflow.db".into(),
        }
    }
}

/// Where artifacts live, and how S3 locations are reached (`docs/s3.md`).
///
/// ```toml
/// [artifacts]
/// url = "s3://training-artifacts/loraflow"   # or `root`; a local path works too
/// endpoint = "http://127.0.0.1:9000"         # S3-compatible server; unset: AWS
/// region = "us-east-1"
/// allow_http = true                          # only for a local http:// endpoint
/// # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or
/// # access_key_id = "…" and secret_access_key = "…" here
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Where steps write their files (a local path or a URL).
    #[serde(alias = "url")]
    pub root: String,
    /// Where approved LoRAs are published.
    pub publish_root: String,
    /// The S3 API's base URL for S3-compatible servers; unset: AWS (or
    /// `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The bucket's region; unset: `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow an `http://` endpoint; unset: `AWS_ALLOW_HTTP`, else HTTPS only.
    pub allow_http: Option<bool>,
    /// Credentials; unset: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Limits of files moved through the server (`ArtifactService`).
    pub transfer: crate::transfer::TransferLimits,
}

impl ArtifactsConfig {
    /// The S3 settings, for [`ArtifactStore::open_with`](loraflow_executors::ArtifactStore::open_with).
    pub fn s3(&self) -> loraflow_executors::S3Options {
        loraflow_executors::S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
        }
    }
}

impl std::fmt::Debug for ArtifactsConfig {
    // The secret key stays out of logs: `S3Options`' Debug redacts it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactsConfig")
            .field("root", &self.root)
            .field("publish_root", &self.publish_root)
            .field("s3", &self.s3())
            .finish()
    }
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            root: "loraflow-artifacts".into(),
            publish_root: "loraflow-published".into(),
            endpoint: None,
            region: None,
            allow_http: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            transfer: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the HTTP/JSON API, the web console, `/metrics` and the health
    /// checks listen (`loraflow serve --http`); none: not served.
    pub http_listen: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Largest dataset upload over HTTP (`POST /v1/datasets`), in bytes.
    pub max_upload_bytes: usize,
    /// How long `loraflow serve` may take to stop after SIGTERM or SIGINT:
    /// it stops accepting at once, ends open `WatchJob` streams (clients
    /// reconnect and resume), lets calls in flight finish, and exits when
    /// the grace is over even if some have not (`"10s"` by default).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            http_listen: None,
            tls: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_upload_bytes: 1 << 30,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantToken {
    pub tenant: String,
    pub token: String,
    /// The key of the HMAC-SHA256 signature on the tenant's webhook
    /// requests (see `docs/webhooks.md`). Without one, the tenant's jobs
    /// cannot have webhooks.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// URI roots the tenant's jobs may name as datasets besides its own
    /// uploads (`<artifacts>/datasets/<tenant>/`): `file:///srv/data/acme/`,
    /// `s3://bucket/acme/`. Matched on whole path segments after
    /// normalisation; see `docs/limits.md`.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorToken {
    pub executor: String,
    pub token: String,
}

/// Bearer tokens. Each tenant's token gives access to its own jobs only;
/// each executor's token lets that executor (and only it) take work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tenants: Vec<TenantToken>,
    pub executors: Vec<ExecutorToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often executors heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Longest a `PollStep` waits for work before answering empty.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Least time between two recorded progress events of one lease.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// How long each step of the standard template waits in the queue for
    /// an executor; past it the job fails, naming what no connected
    /// executor offers (`docs/liveness.md`). `0s` waits forever.
    #[serde(with = "humantime_serde")]
    pub schedule_to_start: Duration,
}

impl SchedulerConfig {
    /// The standard template's settings from this section.
    pub fn template(&self) -> loraflow_core::workflow::TemplateOptions {
        loraflow_core::workflow::TemplateOptions {
            schedule_to_start: (!self.schedule_to_start.is_zero())
                .then_some(self.schedule_to_start),
        }
    }

    /// How long after its last poll an executor still counts as connected
    /// (an executor holding a lease always does): two long polls and a
    /// heartbeat, so one slow round trip does not drop it.
    pub fn connected_within(&self) -> Duration {
        self.poll_timeout * 2 + self.heartbeat_interval
    }
}

/// Webhook delivery: retries, limits, polling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Whether this process fills the outbox and sends deliveries. Events of
    /// a time it was off are sent once it (or another process) is on again.
    pub enabled: bool,
    /// Delay before the first retry; it doubles with each failure.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between two attempts; jitter takes up to half of a
    /// delay off, so retries of many URLs spread out.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest an attempt may take, connecting included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Give up on an event this long after it was queued, and let the URL's
    /// later events go ahead; 0 retries for ever.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Attempts in flight at once (each to a different URL).
    pub concurrency: usize,
    /// How often to look for deliveries queued by other processes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(3 * 24 * 3600),
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl AuthConfig {
    /// Each tenant's allowed roots (entries of one tenant add up).
    pub fn allowed_roots(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.tenants {
            out.entry(t.tenant.clone())
                .or_default()
                .extend(t.allowed_roots.iter().cloned());
        }
        out
    }

    /// Each tenant's webhook secret. Two entries of one tenant that give
    /// different secrets are an error naming the tenant.
    pub fn webhook_secrets(&self) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for t in &self.tenants {
            let Some(secret) = t.webhook_secret.as_ref() else {
                continue;
            };
            if secret.is_empty() {
                return Err(format!(
                    "auth.tenants: the webhook_secret of tenant {} is empty; give a long random string or leave it out",
                    t.tenant
                ));
            }
            match out.insert(t.tenant.clone(), secret.clone()) {
                Some(other) if &other != secret => {
                    return Err(format!(
                        "auth.tenants: tenant {} has two different webhook_secret values; give one",
                        t.tenant
                    ));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_secs(5),
            schedule_to_start: loraflow_core::workflow::TemplateOptions::DEFAULT_SCHEDULE_TO_START,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(e) = &config.telemetry.otlp_endpoint {
            crate::telemetry::check_endpoint("telemetry.otlp_endpoint", e)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(n) = &config.telemetry.service_name {
            crate::telemetry::check_service_name("telemetry.service_name", n)
                .map_err(|e| invalid(e.to_string()))?;
        }
        config.auth.webhook_secrets().map_err(invalid)?;
        let roots = config
            .auth
            .allowed_roots()
            .into_iter()
            .map(|(t, r)| (loraflow_core::ids::TenantId::new(t), r))
            .collect();
        crate::tenancy::Tenancy::new(&config.artifacts.root, &roots).map_err(invalid)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_embedded_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c.store.url, "sqlite://loraflow.db");
        assert_eq!(c.scheduler.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
        let c =
            Config::from_toml("[server]\nshutdown_grace = \"2s\"", Path::new("x.toml")).unwrap();
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(2));
    }

    #[test]
    fn sections_parse_and_unknown_keys_are_refused() {
        let c = Config::from_toml(
            r#"
            [server]
            listen = "0.0.0.0:6000"
            [[auth.tenants]]
            tenant = "acme"
            token = "t1"
            [scheduler]
            heartbeat_interval = "3s"
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 6000);
        assert_eq!(c.auth.tenants[0].tenant, "acme");
        assert_eq!(c.scheduler.heartbeat_interval, Duration::from_secs(3));
        let err =
            Config::from_toml("[store]\nurl = 'x'\npool = 3\n", Path::new("bad.toml")).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
        assert!(err.to_string().contains("pool"), "{err}");
    }

    #[test]
    fn webhook_secrets_sit_next_to_tenant_tokens() {
        let c = Config::from_toml(
            r#"
            [[auth.tenants]]
            tenant = "acme"
            token = "t1"
            webhook_secret = "s-acme"
            [[auth.tenants]]
            tenant = "acme"
            token = "t2"
            [[auth.tenants]]
            tenant = "globex"
            token = "t3"
            [webhooks]
            max_backoff = "30s"
            give_up_after = "0s"
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        let secrets = c.auth.webhook_secrets().unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets["acme"], "s-acme");
        assert_eq!(c.webhooks.max_backoff, Duration::from_secs(30));
        assert_eq!(c.webhooks.give_up_after, Duration::ZERO);
        assert_eq!(c.webhooks.initial_backoff, Duration::from_secs(1));

        let err = Config::from_toml(
            r#"
            [[auth.tenants]]
            tenant = "acme"
            token = "t1"
            webhook_secret = "a"
            [[auth.tenants]]
            tenant = "acme"
            token = "t2"
            webhook_secret = "b"
            "#,
            Path::new("two.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("tenant acme has two different"),
            "{err}"
        );
    }

    #[test]
    fn telemetry_is_configured_and_checked() {
        let c = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nservice_name = \"lf\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(c.telemetry.service_name.as_deref(), Some("lf"));
        assert_eq!(Config::default().telemetry, TelemetryConfig::default());
        let err = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        assert!(err.contains("\"127.0.0.1:4317\""), "{err}");
        let err = Config::from_toml("[telemetry]\nendpoint = \"x\"\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `endpoint`"), "{err}");
    }

    #[test]
    fn limits_and_allowed_roots_are_configured() {
        let c = Config::from_toml(
            r#"
            [[auth.tenants]]
            tenant = "studio"
            token = "t1"
            allowed_roots = ["file:///srv/data/studio/", "s3://bucket/studio/"]
            [[auth.tenants]]
            tenant = "studio"
            token = "t2"
            allowed_roots = ["file:///srv/more/"]
            [limits]
            subject_chars = 40
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.limits.subject_chars, 40);
        assert_eq!(
            c.limits.labels,
            loraflow_core::limits::Limits::default().labels
        );
        assert_eq!(c.auth.allowed_roots()["studio"].len(), 3);

        let err = Config::from_toml(
            "[[auth.tenants]]\ntenant = 'x'\ntoken = 't'\nallowed_roots = ['file:///']\n",
            Path::new("root.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("whole filesystem"), "{err}");
        let err = Config::from_toml("[limits]\nsubject = 3\n", Path::new("l.toml")).unwrap_err();
        assert!(err.to_string().contains("subject"), "{err}");
    }

    #[test]
    fn the_artifacts_section_takes_an_s3_url_endpoint_and_credentials() {
        let c = Config::from_toml(
            r#"
            [artifacts]
            url = "s3://training/loraflow"
            endpoint = "http://127.0.0.1:9000"
            region = "eu-west-1"
            allow_http = true
            access_key_id = "AKIAEXAMPLE"
            secret_access_key = "very-secret"
            "#,
            Path::new("s3.toml"),
        )
        .unwrap();
        assert_eq!(c.artifacts.root, "s3://training/loraflow");
        let s3 = c.artifacts.s3();
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s3.allow_http, Some(true));
        assert_eq!(s3.access_key_id.as_deref(), Some("AKIAEXAMPLE"));
        assert_eq!(s3.secret_access_key.as_deref(), Some("very-secret"));
        assert!(!format!("{c:?}").contains("very-secret"));
        let err =
            Config::from_toml("[artifacts]\nbucket = \"x\"\n", Path::new("s3.toml")).unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
    }

    #[test]
    fn the_templates_schedule_to_start_timeout_is_configured_per_deployment() {
        let default = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(
            default.scheduler.template().schedule_to_start,
            Some(Duration::from_secs(30 * 60))
        );
        let c = Config::from_toml(
            "[scheduler]\nschedule_to_start = \"2h\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            c.scheduler.template().schedule_to_start,
            Some(Duration::from_secs(2 * 3600))
        );
        let never = Config::from_toml(
            "[scheduler]\nschedule_to_start = \"0s\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(never.scheduler.template().schedule_to_start, None);
    }
}
