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
//! [server]
//! listen = "0.0.0.0:50051"
//! tls = { cert = "/etc/loraflow/tls.crt", key = "/etc/loraflow/tls.key" }
//!
//! [[auth.tenants]]
//! tenant = "acme"
//! token = "…"
//!
//! [[auth.executors]]
//! executor = "gpu-node-1"
//! token = "…"
//! ```

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
    /// A catalogue file replacing the built-in one (same shape as the
    /// built-in `default.toml`).
    pub catalogue: Option<PathBuf>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Where steps write their files (a local path or a URL).
    pub root: String,
    /// Where approved LoRAs are published.
    pub publish_root: String,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            root: "loraflow-artifacts".into(),
            publish_root: "loraflow-published".into(),
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
    pub tls: Option<TlsConfig>,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            tls: None,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantToken {
    pub tenant: String,
    pub token: String,
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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_secs(5),
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })
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
}
