//! A loraflow server on an OS-chosen loopback port, over SQLite or a
//! PostgreSQL schema of its own, with real tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loraflow::Engine;
use loraflow::config::{AuthConfig, ExecutorToken, SchedulerConfig, TenantToken};
use loraflow::executors::{Label, Publish, ValidateDataset, ValidateOptions};
use loraflow::grpc::{ServeOptions, auth::Auth};
use loraflow::store::StoreOptions;
use loraflow_proto::pb::v1::executor_service_client::ExecutorServiceClient;
use loraflow_proto::pb::v1::job_service_client::JobServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{FileSampler, FileTrainer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store URL and options of `backend`, fresh for one test; `None` (after a
/// notice) when PostgreSQL is unreachable outside CI. Under `CI=true` an
/// unreachable PostgreSQL fails the test.
pub async fn store_for(backend: Backend, dir: &std::path::Path) -> Option<(String, StoreOptions)> {
    let options = StoreOptions {
        poll_interval: Duration::from_millis(20),
        ..StoreOptions::default()
    };
    match backend {
        Backend::Sqlite => Some((
            format!("sqlite://{}", dir.join("loraflow.db").display()),
            options,
        )),
        Backend::Postgres => {
            use sqlx::Connection;
            let url = database_url();
            let reachable = matches!(
                tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
                    .await,
                Ok(Ok(_))
            );
            if !reachable {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "PostgreSQL at {url} is unreachable, and CI=true requires the PostgreSQL tests to run"
                    );
                }
                eprintln!(
                    "notice: PostgreSQL at {url} is unreachable; skipping this PostgreSQL test"
                );
                return None;
            }
            let schema = format!("e2e_{:016x}", rand::random::<u64>());
            Some((
                url,
                StoreOptions {
                    postgres_schema: Some(schema),
                    ..options
                },
            ))
        }
    }
}

/// Drop a test's PostgreSQL schema.
pub async fn drop_schema(options: &StoreOptions) {
    use sqlx::Connection;
    if let Some(schema) = &options.postgres_schema
        && let Ok(mut c) = sqlx::PgConnection::connect(&database_url()).await
    {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut c)
            .await;
    }
}

/// The key that signs tenant acme's webhook requests.
pub const ACME_WEBHOOK_SECRET: &str = "whsec-acme-test";

pub fn auth_config() -> AuthConfig {
    AuthConfig {
        tenants: vec![
            TenantToken {
                tenant: "acme".into(),
                token: "t-acme".into(),
                webhook_secret: Some(ACME_WEBHOOK_SECRET.into()),
                allowed_roots: vec![],
            },
            TenantToken {
                tenant: "globex".into(),
                token: "t-globex".into(),
                webhook_secret: None,
                allowed_roots: vec![],
            },
        ],
        executors: (1..=4)
            .map(|i| ExecutorToken {
                executor: format!("gpu-{i}"),
                token: format!("e-gpu-{i}"),
            })
            .collect(),
    }
}

/// What servers of one deployment share: the store and the artifact root
/// (under `tmp`). Replicas and restarts reuse it.
#[derive(Clone)]
pub struct Deployment {
    pub tmp: Arc<tempfile::TempDir>,
    pub store_url: String,
    pub store_options: StoreOptions,
}

impl Deployment {
    /// A fresh store of `backend` and a temporary artifact root; `None`
    /// when PostgreSQL is unreachable outside CI (see [`store_for`]).
    pub async fn new(backend: Backend) -> Option<Self> {
        let tmp = tempfile::tempdir().unwrap();
        let (store_url, store_options) = store_for(backend, tmp.path()).await?;
        Some(Self {
            tmp: Arc::new(tmp),
            store_url,
            store_options,
        })
    }

    /// Drop the PostgreSQL schema (the temporary folder goes with the last clone).
    pub async fn remove(self) {
        drop_schema(&self.store_options).await;
    }
}

pub struct TestServer {
    pub deployment: Deployment,
    pub tmp: Arc<tempfile::TempDir>,
    pub engine: Engine,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub store_options: StoreOptions,
    pub dataset_uri: String,
    server: tokio::task::JoinHandle<()>,
}

/// What a test server runs in-process.
#[derive(Default)]
pub struct ServerSetup {
    /// Run the built-in executors (with small train/sample stand-ins) in-process.
    pub executors: bool,
    pub trainer: FileTrainer,
    pub scheduler: Option<SchedulerConfig>,
    pub max_message_bytes: Option<usize>,
    /// Serve TLS with this certificate and key.
    pub tls: Option<loraflow::config::TlsConfig>,
    /// Step kinds that only remote workers run.
    pub custom_kinds: Vec<String>,
    /// Listen here (a restarted server takes its predecessor's address).
    pub addr: Option<SocketAddr>,
    /// Deliver webhooks with these settings, tenant acme signing with
    /// [`ACME_WEBHOOK_SECRET`].
    pub webhooks: Option<loraflow::config::WebhooksConfig>,
}

pub type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;
pub type ExecutorClient = ExecutorServiceClient<InterceptedService<Channel, BearerToken>>;

#[derive(Clone)]
pub struct BearerToken(Option<String>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", t.parse().unwrap());
        }
        Ok(req)
    }
}

impl TestServer {
    pub async fn start(backend: Backend, setup: ServerSetup) -> Option<Self> {
        let deployment = Deployment::new(backend).await?;
        Some(Self::start_in(&deployment, setup).await)
    }

    /// A server (a new process, as far as the store can tell) on an
    /// existing deployment.
    pub async fn start_in(deployment: &Deployment, setup: ServerSetup) -> Self {
        let tmp = deployment.tmp.clone();
        let store_options = deployment.store_options.clone();
        let mut b = Engine::builder()
            .store(deployment.store_url.clone())
            .store_options(store_options.clone())
            .artifacts(tmp.path().join("artifacts").display().to_string())
            .workdir(tmp.path().join("work"));
        if let Some(s) = setup.scheduler.clone() {
            b = b.scheduler(s);
        }
        for kind in &setup.custom_kinds {
            b = b.custom_kind(kind.clone());
        }
        if let Some(w) = setup.webhooks.clone() {
            b = b.webhooks(w).webhook_secret("acme", ACME_WEBHOOK_SECRET);
        }
        if setup.executors {
            b = b
                .executor(ValidateDataset {
                    options: ValidateOptions {
                        min_side: 32,
                        ..Default::default()
                    },
                })
                .executor(Label::default())
                .executor(setup.trainer.clone())
                .executor(FileSampler)
                .executor(Publish {
                    destination: format!("file://{}", tmp.path().join("published").display()),
                });
        }
        let engine = b.build().await.unwrap();
        let upload = tmp.path().join("upload");
        if !upload.exists() {
            super::dataset(&upload, 3);
        }
        let (dataset_uri, _) = engine
            .artifacts()
            .upload_dir(&upload, "datasets/acme/corgi")
            .await
            .unwrap();

        let listener = match setup.addr {
            // The previous server's socket may take a moment to be released.
            Some(addr) => {
                let mut tries = 0;
                loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(_) if tries < 100 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("cannot listen on {addr} again: {e}"),
                    }
                }
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let options = ServeOptions {
            auth: Auth::from_config(&auth_config()),
            max_message_bytes: setup.max_message_bytes.unwrap_or(4 * 1024 * 1024),
            tls: setup.tls.clone(),
            max_poll: Duration::from_secs(30),
            transfer: Default::default(),
        };
        let server = tokio::spawn({
            let (engine, stop) = (engine.clone(), shutdown.clone());
            async move {
                loraflow::grpc::serve(engine, options, listener, stop)
                    .await
                    .unwrap()
            }
        });
        Self {
            deployment: deployment.clone(),
            tmp,
            engine,
            addr,
            shutdown,
            store_options,
            dataset_uri,
            server,
        }
    }

    pub async fn channel(&self) -> Channel {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap();
        for _ in 0..50 {
            if let Ok(c) = endpoint.connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server at {} does not answer", self.addr)
    }

    /// A client with the tenant's (or any) bearer token.
    pub async fn client(&self, token: Option<&str>) -> Client {
        JobServiceClient::with_interceptor(
            self.channel().await,
            BearerToken(token.map(|t| format!("Bearer {t}"))),
        )
    }

    pub async fn executor_client(&self, token: Option<&str>) -> ExecutorClient {
        ExecutorServiceClient::with_interceptor(
            self.channel().await,
            BearerToken(token.map(|t| format!("Bearer {t}"))),
        )
    }

    /// Stop this server and drop its store.
    pub async fn stop(self) {
        self.halt().await.remove().await;
    }

    /// Stop this server and leave its store for another: long polls end
    /// at once (UNAVAILABLE), calls in flight finish, connections close.
    pub async fn halt(self) -> Deployment {
        self.engine.shutdown_token().cancel();
        self.shutdown.cancel();
        let _ = self.server.await;
        self.engine.shutdown().await;
        self.deployment
    }
}

/// Define a test once and run it on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $(
            mod $name {
                use super::*;

                async fn run($backend: Backend) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(Backend::Postgres).await
                }
            }
        )*
    };
}
