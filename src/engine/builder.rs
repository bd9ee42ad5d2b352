//! `Engine::builder()`: choose a store, a catalogue, artifact storage and
//! executors, then `build()`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use loraflow_core::catalogue::Catalogue;
use loraflow_core::clock::Clock;
use loraflow_core::executor::{Capabilities, Executor};
use loraflow_core::ids::{ExecutorId, TenantId};
use loraflow_core::job::JobServices;
use loraflow_core::workflow::KnownKinds;
use loraflow_executors::ArtifactStore;
use loraflow_executors::worker::{Worker, WorkerOptions};
use loraflow_store::{AuditKey, PublicKey, Store, StoreOptions};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Engine, Inner, fleet::Fleet, in_process::InProcessApi};
use crate::clock::TokioClock;
use crate::config::{AuditConfig, Config, SchedulerConfig, WebhooksConfig};
use crate::error::{Error, Result};
use crate::scheduler::Scheduler;

/// Builds an [`Engine`]. Defaults: a SQLite file `loraflow.db` in the current
/// directory, the built-in catalogue, artifacts under `loraflow-artifacts/`,
/// no in-process executors.
///
/// There is no authentication setting, by design. The in-process API is
/// called by the embedding program, which is trusted: every job call names
/// its tenant ([`Engine::create_job`], [`Engine::get_job`], ...) and is
/// scoped to it exactly as over gRPC (another tenant's job is not found),
/// but nothing checks who the caller is. Bearer tokens belong to the network
/// boundary: give them to the gRPC server in
/// [`ServeOptions::auth`](crate::grpc::ServeOptions) (from the `[auth]`
/// section of the configuration, [`Auth::from_config`](crate::grpc::auth::Auth::from_config)),
/// which maps each token to its tenant or executor before calling the engine.
/// An embedding program that accepts requests from others must do the same
/// mapping itself before it calls the engine.
pub struct EngineBuilder {
    store_url: String,
    store_options: StoreOptions,
    catalogue: Option<Catalogue>,
    artifacts_root: String,
    artifacts_s3: loraflow_executors::S3Options,
    executors: Vec<Arc<dyn Executor>>,
    in_process: Capabilities,
    workdir: Option<PathBuf>,
    clock: Option<Arc<dyn Clock>>,
    scheduler: SchedulerConfig,
    custom_kinds: Vec<String>,
    webhooks: WebhooksConfig,
    webhook_secrets: HashMap<TenantId, String>,
    allowed_roots: HashMap<TenantId, Vec<String>>,
    limits: loraflow_core::limits::Limits,
    config_error: Option<String>,
    audit_key: Option<AuditKey>,
    trusted_keys: Vec<PublicKey>,
    audit_config: AuditConfig,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        let config = Config::default();
        Self {
            store_url: config.store.url,
            store_options: StoreOptions::default(),
            catalogue: None,
            artifacts_root: config.artifacts.root,
            artifacts_s3: loraflow_executors::S3Options::default(),
            executors: Vec::new(),
            in_process: Capabilities {
                max_concurrent_steps: 2,
                ..Capabilities::default()
            },
            workdir: None,
            clock: None,
            scheduler: config.scheduler,
            custom_kinds: Vec::new(),
            webhooks: config.webhooks,
            webhook_secrets: HashMap::new(),
            allowed_roots: HashMap::new(),
            limits: config.limits,
            config_error: None,
            audit_key: None,
            trusted_keys: Vec::new(),
            audit_config: AuditConfig::default(),
        }
    }
}

impl EngineBuilder {
    /// Settings from a `loraflow.toml` (store, artifacts, scheduler,
    /// webhooks, limits, and the tenants' webhook secrets and allowed roots).
    pub fn config(mut self, config: &Config) -> Self {
        self.limits = config.limits.clone();
        for (tenant, roots) in config.auth.allowed_roots() {
            self = self.allowed_roots(tenant, roots);
        }
        self.store_url = config.store.url.clone();
        self.artifacts_root = config.artifacts.root.clone();
        self.artifacts_s3 = config.artifacts.s3();
        self.scheduler = config.scheduler.clone();
        self.webhooks = config.webhooks.clone();
        self.audit_config = config.audit.clone();
        match config.auth.webhook_secrets() {
            Ok(secrets) => {
                for (tenant, secret) in secrets {
                    self.webhook_secrets.insert(TenantId::new(tenant), secret);
                }
            }
            Err(e) => self.config_error = Some(e),
        }
        self
    }

    /// The key that signs the audit log (events, job heads, feed
    /// checkpoints); it wins over `[audit] signing_key`. Without either: a
    /// SQLite store's `<file>.audit-key`, created on first start; for
    /// PostgreSQL with a local artifact root, `<artifacts root>.audit-key`;
    /// otherwise a key that dies with the process (memory stores, tests).
    pub fn audit_key(mut self, key: AuditKey) -> Self {
        self.audit_key = Some(key);
        self
    }

    /// Trust signatures by this public key too (a key used before a rotation).
    pub fn trusted_key(mut self, key: PublicKey) -> Self {
        self.trusted_keys.push(key);
        self
    }

    /// Webhook delivery settings (backoff, timeouts, concurrency).
    pub fn webhooks(mut self, config: WebhooksConfig) -> Self {
        self.webhooks = config;
        self
    }

    /// The key that signs `tenant`'s webhook requests; a tenant without one
    /// cannot give its jobs webhooks.
    pub fn webhook_secret(
        mut self,
        tenant: impl Into<TenantId>,
        secret: impl Into<String>,
    ) -> Self {
        self.webhook_secrets.insert(tenant.into(), secret.into());
        self
    }

    /// URI roots `tenant` may name as a dataset besides its own uploads
    /// (`<artifacts>/datasets/<tenant>/`, always allowed): `file:///srv/data/studio/`,
    /// `s3://bucket/studio/`. This is how an embedding program lets its
    /// tenants read data it did not upload through the artifact store; the
    /// rule itself (see [`crate::tenancy`]) holds for embedded callers as
    /// it does over gRPC. Repeatable; roots add up.
    pub fn allowed_roots(
        mut self,
        tenant: impl Into<TenantId>,
        roots: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.allowed_roots
            .entry(tenant.into())
            .or_default()
            .extend(roots.into_iter().map(Into::into));
        self
    }

    /// Limits on every input (the `[limits]` section of `loraflow.toml`);
    /// default: [`Limits::default`](loraflow_core::limits::Limits).
    pub fn limits(mut self, limits: loraflow_core::limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// `sqlite://path`, `sqlite::memory:`, `postgres://...`, or `memory:`.
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store_url = url.into();
        self
    }

    pub fn store_options(mut self, options: StoreOptions) -> Self {
        self.store_options = options;
        self
    }

    pub fn catalogue(mut self, catalogue: Catalogue) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Where step artifacts are written: a local folder or a URL.
    pub fn artifacts(mut self, root: impl Into<String>) -> Self {
        self.artifacts_root = root.into();
        self
    }

    /// How S3 artifact locations are reached (endpoint, region, plain
    /// HTTP, credentials), over the AWS environment variables.
    pub fn artifacts_s3(mut self, options: loraflow_executors::S3Options) -> Self {
        self.artifacts_s3 = options;
        self
    }

    /// Run this executor in-process (it serves the kinds it declares).
    pub fn executor(mut self, executor: impl Executor) -> Self {
        self.executors.push(Arc::new(executor));
        self
    }

    pub fn executor_arc(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executors.push(executor);
        self
    }

    /// Capabilities of the in-process executors (GPU, concurrency, labels);
    /// their kinds and engines come from the executors themselves.
    pub fn in_process_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.in_process = capabilities;
        self
    }

    /// Scratch space of in-process executors (default: a temporary folder).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Accept workflows with steps of this kind, run by an executor registered later.
    pub fn custom_kind(mut self, kind: impl Into<String>) -> Self {
        self.custom_kinds.push(kind.into());
        self
    }

    /// The time source (tests inject one; the default follows tokio time).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    pub fn scheduler(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = config;
        self
    }

    /// How long each step of the standard template waits in the queue for
    /// an executor before its job fails naming what no connected executor
    /// offers; `Duration::ZERO` waits forever. Default 30 minutes; the same
    /// as `[scheduler] schedule_to_start`.
    pub fn schedule_to_start(mut self, timeout: std::time::Duration) -> Self {
        self.scheduler.schedule_to_start = timeout;
        self
    }

    /// Open the store (creating its tables), start the projections, the
    /// scheduler and webhook delivery, and start the in-process executors.
    pub async fn build(self) -> Result<Engine> {
        if let Some(e) = self.config_error {
            let mut v = loraflow_core::validation::Violations::default();
            v.push("auth.tenants", e);
            return Err(Error::InvalidArgument(v));
        }
        // The schema offers each engine exactly what that engine runs: the
        // engines' parameter mappings declare it (`engine_rules`).
        let catalogue = self
            .catalogue
            .unwrap_or_else(Catalogue::builtin)
            .with_engine_rules(loraflow_executors::engine_rules())
            .map_err(|e| {
                let mut v = loraflow_core::validation::Violations::default();
                v.push("catalogue", e.to_string());
                Error::InvalidArgument(v)
            })?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::new()));
        let mut kinds = KnownKinds::builtin();
        for k in self
            .custom_kinds
            .iter()
            .cloned()
            .chain(self.executors.iter().flat_map(|e| e.kinds()).map(|k| k.0))
        {
            kinds = kinds.with(k);
        }
        let services = JobServices::new(catalogue)
            .with_clock(clock.clone())
            .with_kinds(kinds)
            .with_limits(self.limits.clone())
            .with_template(self.scheduler.template());
        let mut store_options = self.store_options;
        let configured =
            crate::audit::configured_keys(&self.audit_config).map_err(|(field, e)| {
                let mut v = loraflow_core::validation::Violations::default();
                v.push(field, e);
                Error::InvalidArgument(v)
            })?;
        store_options.trusted_keys.extend(configured.trusted);
        store_options.trusted_keys.extend(self.trusted_keys);
        store_options.audit_key = match (self.audit_key, store_options.audit_key.take()) {
            (Some(k), _) | (None, Some(k)) => Some(k),
            (None, None) => match configured.signing {
                Some(k) => Some(k),
                None => shared_store_key(&self.store_url, &self.artifacts_root)?,
            },
        };
        let store = Store::open_with(&self.store_url, services.clone(), store_options).await?;
        let artifacts = ArtifactStore::open_with(&self.artifacts_root, &self.artifacts_s3)?;
        // A missing bucket or refused credentials stop the start, named,
        // rather than failing the first job's first step.
        artifacts.probe().await?;
        let tenancy = crate::tenancy::Tenancy::new(artifacts.root().as_str(), &self.allowed_roots)
            .map_err(|e| {
                let mut v = loraflow_core::validation::Violations::default();
                v.push("auth.tenants.allowed_roots", e);
                Error::InvalidArgument(v)
            })?;
        let shutdown = CancellationToken::new();
        let scheduler = Scheduler::new(services.catalogue.clone(), clock);
        let fleet = Arc::new(Fleet::default());
        let connected_within = self.scheduler.connected_within();
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            self.webhooks,
            self.webhook_secrets,
        ));

        let engine = Engine {
            inner: Arc::new(Inner {
                store: store.clone(),
                services,
                artifacts: artifacts.clone(),
                scheduler: scheduler.clone(),
                fleet: fleet.clone(),
                config: self.scheduler,
                leases: Mutex::new(Default::default()),
                signals: Mutex::new(Default::default()),
                shutdown: shutdown.clone(),
                tasks: Mutex::new(Vec::new()),
                webhooks: webhooks.clone(),
                tenancy,
            }),
        };

        let mut tasks = Vec::new();
        let projections = store.start_projections(shutdown.clone());
        tasks.push(tokio::spawn(async move {
            match projections.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("projections stopped: {e}"),
                Err(e) => warn!("projections task failed: {e}"),
            }
        }));
        tasks.push(tokio::spawn(
            scheduler.clone().follow(store.clone(), shutdown.clone()),
        ));
        tasks.push(tokio::spawn(scheduler.clone().run_timers(
            store.clone(),
            fleet,
            connected_within,
            shutdown.clone(),
        )));
        scheduler.wait_caught_up().await;
        tasks.extend(webhooks.start(&store, &shutdown));

        if !self.executors.is_empty() {
            let workdir = self
                .workdir
                .unwrap_or_else(|| std::env::temp_dir().join("loraflow-work"));
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            let options = WorkerOptions {
                executor_id: ExecutorId::new(format!("in-process-{host}-{}", std::process::id())),
                capabilities: self.in_process,
                workdir,
                max_backoff: std::time::Duration::from_secs(5),
            };
            let mut worker = Worker::new(
                Arc::new(InProcessApi::new(engine.clone())),
                artifacts,
                options,
            );
            for e in self.executors {
                worker = worker.with(e);
            }
            worker = worker.with_outcome_limits((&self.limits).into());
            tasks.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        engine
            .inner
            .tasks
            .lock()
            .expect("tasks lock poisoned")
            .extend(tasks);
        Ok(engine)
    }
}

/// The key of a PostgreSQL store without a configured one: a file beside a
/// local artifact root (`<root>.audit-key`, created on first start), which
/// every server of one deployment on one machine shares. `None` for other
/// stores (the store chooses; see `StoreOptions::audit_key`) and for a
/// remote artifact root (the store then warns that its key dies with the
/// process).
fn shared_store_key(store_url: &str, artifacts_root: &str) -> Result<Option<AuditKey>> {
    if !store_url.starts_with("postgres") {
        return Ok(None);
    }
    let root = match artifacts_root.strip_prefix("file://") {
        Some(path) => path,
        None if artifacts_root.contains("://") => return Ok(None),
        None => artifacts_root,
    };
    let path = PathBuf::from(format!("{}.audit-key", root.trim_end_matches('/')));
    let (key, created) = AuditKey::load_or_create(&path).map_err(loraflow_store::Error::from)?;
    if created {
        tracing::info!(
            key_file = %path.display(),
            key_id = key.key_id(),
            "created the audit signing key {}; its public key (give it to auditors): {}",
            path.display(),
            key.public_key().to_hex()
        );
    }
    Ok(Some(key))
}
