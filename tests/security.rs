//! The hostile tenant, over real loopback gRPC on SQLite and PostgreSQL:
//! datasets of other tenants, of the server's disk, `..` escapes, symbolic
//! links and other tenants' allowed roots are refused with
//! `PERMISSION_DENIED`; oversized inputs with `INVALID_ARGUMENT` naming the
//! field and the limit. After each refusal the event store and the artifact
//! tree are exactly as before (counted before and after). And the CLI
//! stores one folder once, and uploads nothing for a refused submit.

use crate::common;
use crate::on_both_backends;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::server::{Backend, Deployment};
use common::*;
use loraflow::Engine;
use loraflow::config::{AuthConfig, Config, TenantToken};
use loraflow::core::catalogue::ParamValue;
use loraflow::core::ids::TenantId;
use loraflow::core::job::JobSpec;
use loraflow::executors::LocalDataset;
use loraflow::grpc::ServeOptions;
use loraflow::store::FeedFilter;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_client::JobServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Adds the tenant's bearer token to each request.
type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = JobServiceClient<InterceptedService<Channel, Auth>>;

/// A server whose tenants `studio` and `other` each have an allowed root
/// under `<tmp>/srv/data/`, and `studio` an uploaded dataset.
struct Hostile {
    deployment: Deployment,
    engine: Engine,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    artifacts: PathBuf,
    /// `studio`'s upload.
    studio_upload: String,
    srv: PathBuf,
}

fn tenant(name: &str, roots: Vec<String>) -> TenantToken {
    TenantToken {
        tenant: name.into(),
        token: format!("t-{name}"),
        webhook_secret: None,
        allowed_roots: roots,
    }
}

fn file_url(p: &Path) -> String {
    format!("file://{}/", p.display())
}

impl Hostile {
    async fn start(backend: Backend) -> Option<Self> {
        let deployment = Deployment::new(backend).await?;
        let tmp = deployment.tmp.path().to_owned();
        let artifacts = tmp.join("artifacts");
        let srv = tmp.join("srv/data");
        for t in ["studio", "other"] {
            dataset(&srv.join(t).join("set"), 2);
        }
        let mut config = Config::default();
        config.store.url = deployment.store_url.clone();
        config.artifacts.root = artifacts.display().to_string();
        config.auth = AuthConfig {
            tenants: vec![
                tenant("studio", vec![file_url(&srv.join("studio"))]),
                tenant("other", vec![file_url(&srv.join("other"))]),
            ],
            executors: vec![],
        };
        let engine = Engine::builder()
            .config(&config)
            .store_options(deployment.store_options.clone())
            .workdir(tmp.join("work"))
            .build()
            .await
            .unwrap();
        dataset(&tmp.join("studio-photos"), 3);
        let local = LocalDataset::read(&tmp.join("studio-photos")).unwrap();
        let studio_upload = engine
            .artifacts()
            .upload_dataset("studio", &local)
            .await
            .unwrap()
            .uri;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let options = ServeOptions::from_config(&config);
        let server = tokio::spawn({
            let (engine, stop) = (engine.clone(), shutdown.clone());
            async move {
                loraflow::grpc::serve(engine, options, listener, stop)
                    .await
                    .unwrap()
            }
        });
        Some(Self {
            deployment,
            engine,
            addr,
            shutdown,
            server,
            artifacts,
            studio_upload,
            srv,
        })
    }

    async fn client(&self, tenant: &str) -> Client {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap();
        let mut channel = None;
        for _ in 0..50 {
            if let Ok(c) = endpoint.connect().await {
                channel = Some(c);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let token: tonic::metadata::MetadataValue<_> =
            format!("Bearer t-{tenant}").parse().unwrap();
        let auth: Auth = Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", token.clone());
            Ok(req)
        });
        JobServiceClient::with_interceptor(channel.expect("the server answers"), auth)
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Events in the store and files (and folders) in the artifact tree.
    async fn counts(&self) -> (usize, usize) {
        let events = self
            .engine
            .store()
            .feed()
            .read(0, 1_000_000, &FeedFilter::all())
            .await
            .unwrap()
            .len();
        (events, entries(&self.artifacts))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        self.engine.shutdown().await;
        self.deployment.remove().await;
    }
}

/// Every file and folder under `dir`.
fn entries(dir: &Path) -> usize {
    let Ok(read) = std::fs::read_dir(dir) else {
        return 0;
    };
    read.map(|e| {
        let p = e.unwrap().path();
        1 + if p.is_dir() && !p.is_symlink() {
            entries(&p)
        } else {
            0
        }
    })
    .sum()
}

fn request(spec: JobSpec) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        job: Some(spec.into()),
        request_id: String::new(),
        validate_only: false,
    }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// `tenant`'s CreateJob of `spec` is refused with `code`, names `field`,
/// and writes nothing: the store's events and the artifact tree are
/// counted before and after.
async fn refused(
    h: &Hostile,
    tenant: &str,
    spec: JobSpec,
    code: Code,
    field: &str,
) -> tonic::Status {
    let before = h.counts().await;
    let mut c = h.client(tenant).await;
    let err = c.create_job(request(spec.clone())).await.unwrap_err();
    assert_eq!(err.code(), code, "{field}: {}", err.message());
    assert!(
        fields(&err).iter().any(|f| f == field),
        "{field} not among {:?}: {}",
        fields(&err),
        err.message()
    );
    // validate_only answers the same, and writes nothing either.
    let mut dry = request(spec);
    dry.validate_only = true;
    let err2 = c.create_job(dry).await.unwrap_err();
    assert_eq!(
        err2.code(),
        code,
        "validate_only {field}: {}",
        err2.message()
    );
    assert_eq!(h.counts().await, before, "{field}: something was written");
    err
}

on_both_backends! {
    async fn datasets_outside_the_tenant_s_roots_are_permission_denied(backend: Backend) {
        let Some(h) = Hostile::start(backend).await else { return };
        let denied = |uri: &str| spec(uri);
        let root = h.artifacts.display().to_string();

        // Another tenant's upload, by its URI and by escapes into it.
        let sha = h.studio_upload.trim_end_matches('/').rsplit('/').next().unwrap().to_owned();
        for uri in [
            h.studio_upload.clone(),
            format!("file://{root}/datasets/other/../studio/{sha}/"),
            format!("file://{root}/datasets/other/%2e%2e/studio/{sha}/"),
            format!("file://{root}/datasets/other/./../../datasets/studio/{sha}"),
            format!("{root}/datasets/studio/{sha}"),
            format!("file://{root}/datasets/"),
            "file:///etc/".to_owned(),
            "file:///root/".to_owned(),
            "/etc".to_owned(),
            // Under studio's allowed root, and a sibling sharing its prefix.
            file_url(&h.srv.join("studio/set")),
            file_url(&h.srv.join("studio")).trim_end_matches('/').to_owned() + "-2/",
            format!("file://{}/other/../studio/set/", h.srv.display()),
        ] {
            let err = refused(&h, "other", denied(&uri), Code::PermissionDenied, "job.dataset.uri").await;
            assert!(err.message().contains("tenant other may not read"), "{uri}: {}", err.message());
            assert_eq!(
                err.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(),
                Some("URI_NOT_ALLOWED")
            );
            // Refused before any listing: no count of what is there.
            assert!(!err.message().contains("images"), "{uri}: {}", err.message());
        }

        // An encoded separator is no way around the segment match.
        refused(
            &h,
            "other",
            denied(&format!("file://{root}/datasets/other/x%2F..%2F..%2Fstudio%2F{sha}/")),
            Code::InvalidArgument,
            "job.dataset.uri",
        )
        .await;

        // A symbolic link in the tenant's own namespace that leads out of it.
        let own = h.artifacts.join("datasets/other");
        std::fs::create_dir_all(&own).unwrap();
        std::os::unix::fs::symlink(h.srv.join("studio"), own.join("link")).unwrap();
        refused(&h, "other", denied(&file_url(&own.join("link/set"))), Code::PermissionDenied, "job.dataset.uri").await;

        // The rule allows what it should: studio's own upload and root, and
        // other's root, each to its tenant.
        let mut studio = h.client("studio").await;
        let a = studio.create_job(request(spec(&h.studio_upload))).await.unwrap().into_inner();
        assert_eq!(a.state, pb::JobState::Submitted as i32);
        let b = studio.create_job(request(spec(&file_url(&h.srv.join("studio/set"))))).await.unwrap().into_inner();
        assert_eq!(b.state, pb::JobState::Submitted as i32);
        let mut other = h.client("other").await;
        let c = other.create_job(request(spec(&file_url(&h.srv.join("other/set"))))).await.unwrap().into_inner();
        assert_eq!(c.state, pb::JobState::Submitted as i32);

        // The server tells each caller its tenant and its upload root.
        let status = other.get_service_status(pb::GetServiceStatusRequest::default()).await.unwrap().into_inner();
        assert_eq!(status.tenant, "other");
        assert!(status.dataset_root.ends_with("/artifacts/datasets/other/"), "{}", status.dataset_root);
        h.stop().await;
    }

    async fn oversized_inputs_are_refused_naming_field_and_limit(backend: Backend) {
        let Some(h) = Hostile::start(backend).await else { return };
        let base = || spec(&h.studio_upload);

        let mut s = base();
        s.naming.subject = "s".repeat(3 * 1024 * 1024);
        let err = refused(&h, "studio", s, Code::InvalidArgument, "job.naming.subject").await;
        assert!(fields(&err).contains(&"job".to_owned()), "the request size is named too: {:?}", fields(&err));
        assert!(err.message().len() < 4096, "the answer quotes, not echoes: {} bytes", err.message().len());

        let mut s = base();
        s.naming.subject = "s".repeat(10 * 1024);
        let err = refused(&h, "studio", s, Code::InvalidArgument, "job.naming.subject").await;
        assert!(err.message().contains("limits.subject_chars"), "{}", err.message());

        let mut s = base();
        s.labels = (0..10_000).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        refused(&h, "studio", s, Code::InvalidArgument, "job.labels").await;

        let mut s = base();
        s.labels.insert("team".into(), "v".repeat(1024 * 1024));
        refused(&h, "studio", s, Code::InvalidArgument, "job.labels.team").await;

        let mut s = base();
        s.params.insert("trigger_word".into(), ParamValue::Str("t".repeat(1024 * 1024)));
        let err = refused(&h, "studio", s, Code::InvalidArgument, "job.params.trigger_word").await;
        assert!(err.message().contains("limits.trigger_word_chars"), "{}", err.message());

        let mut s = base();
        s.sample_prompts = vec!["a corgi".into(); 17];
        refused(&h, "studio", s, Code::InvalidArgument, "job.sample_prompts").await;
        let mut s = base();
        s.sample_prompts = vec!["p".repeat(5000)];
        refused(&h, "studio", s, Code::InvalidArgument, "job.sample_prompts[0]").await;

        let mut s = base();
        s.webhooks = vec![loraflow::core::webhook::WebhookSpec::new(format!("https://h.example/{}", "a".repeat(3000)), ["*"])];
        let err = refused(&h, "studio", s, Code::InvalidArgument, "job.webhooks[0].url").await;
        assert!(err.message().contains("limits.webhook_url_chars"), "{}", err.message());

        // Step params nested past the limit.
        let mut s = base();
        let model = h.engine.catalogue().base_model(&"tiny-sd".into()).unwrap().clone();
        let mut wf = loraflow::core::workflow::standard_lora(&model, loraflow::core::catalogue::Engine::Native);
        let mut deep = serde_json::json!("x");
        for _ in 0..20 {
            deep = serde_json::json!({ "a": deep });
        }
        wf.steps[0].params = deep;
        s.workflow = Some(wf);
        let err = refused(&h, "studio", s, Code::InvalidArgument, "job.workflow.steps[0].params").await;
        assert!(err.message().contains("limits.step_params_depth"), "{}", err.message());

        // A request id past its limit (the wire's own rule).
        let before = h.counts().await;
        let mut c = h.client("studio").await;
        let mut r = request(base());
        r.request_id = "r".repeat(100_000);
        let err = c.create_job(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(fields(&err).contains(&"request_id".to_owned()), "{:?}", fields(&err));
        assert_eq!(h.counts().await, before);

        // Within every limit, the same spec is accepted.
        let ok = c.create_job(request(base())).await.unwrap().into_inner();
        assert_eq!(ok.state, pb::JobState::Submitted as i32);
        h.stop().await;
    }
}

/// The embedded API applies the same limits: step params 45 levels deep
/// (the issue's case; over gRPC, protobuf's own recursion limit stops such
/// a message before it is decoded) are `InvalidArgument`, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_api_refuses_deep_params_and_foreign_uris() {
    let Some(h) = Hostile::start(Backend::Sqlite).await else {
        return;
    };
    let before = h.counts().await;
    let mut s = spec(&h.studio_upload);
    let model = h
        .engine
        .catalogue()
        .base_model(&"tiny-sd".into())
        .unwrap()
        .clone();
    let mut wf =
        loraflow::core::workflow::standard_lora(&model, loraflow::core::catalogue::Engine::Native);
    let mut deep = serde_json::json!(1);
    for _ in 0..45 {
        deep = serde_json::json!([deep]);
    }
    wf.steps[2].params = deep;
    s.workflow = Some(wf);
    let new = loraflow::NewJob {
        spec: s,
        request_id: None,
    };
    let err = h
        .engine
        .create_job(&TenantId::new("studio"), new.clone())
        .await
        .unwrap_err();
    let loraflow::Error::InvalidArgument(v) = err else {
        panic!("{err:?}")
    };
    assert!(
        v.iter()
            .any(|f| f.field == "workflow.steps[2].params" && f.description.contains("45 levels")),
        "{v}"
    );
    let err = h
        .engine
        .create_job(&TenantId::new("other"), new)
        .await
        .unwrap_err();
    assert!(
        matches!(err, loraflow::Error::PermissionDenied(_)),
        "{err:?}"
    );
    assert_eq!(h.counts().await, before);
    h.stop().await;
}

fn cli(h: &Hostile, tenant: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loraflow"))
        .args(["submit", "--json"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env("LORAFLOW_SERVER", format!("http://{}", h.addr))
        .env("LORAFLOW_TOKEN", format!("t-{tenant}"))
        .env("LORAFLOW_ARTIFACTS", &h.artifacts)
        .output()
        .unwrap()
}

/// `loraflow submit` of a folder: stored once under the tenant's namespace
/// by content; a second submit uploads nothing and says so; a refused
/// submit uploads nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_folder_submitted_twice_is_stored_once_and_a_refused_submit_uploads_nothing() {
    let Some(h) = Hostile::start(Backend::Sqlite).await else {
        return;
    };
    let folder = h.deployment.tmp.path().join("mine");
    dataset(&folder, 4);
    let folder_arg = folder.display().to_string();
    let args = [
        "--base-model",
        "tiny-sd",
        "--dataset",
        &folder_arg,
        "--subject",
        "corgi",
        "--prompt",
        "a corgi",
    ];

    // Refused by the server's checks: nothing uploaded, nothing written.
    let before = h.counts().await;
    let long = "s".repeat(10_000);
    let mut refused_args = args.to_vec();
    refused_args[5] = &long;
    let out = tokio::task::block_in_place(|| cli(&h, "other", &refused_args));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("naming.subject"), "{stderr}");
    assert_eq!(
        h.counts().await,
        before,
        "a refused submit left something behind"
    );

    // Accepted: uploaded into other's namespace by content.
    let out = tokio::task::block_in_place(|| cli(&h, "other", &args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sha = LocalDataset::read(&folder).unwrap().manifest_sha256;
    let stored = h.artifacts.join("datasets/other").join(sha.to_string());
    assert!(stderr.contains("uploaded 8 of 8 files"), "{stderr}");
    assert_eq!(entries(&stored), 8);
    let after_first = entries(&h.artifacts);

    // Again: the same job input, nothing uploaded, and said so.
    let out = tokio::task::block_in_place(|| cli(&h, "other", &args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("already stored") && stderr.contains("nothing uploaded"),
        "{stderr}"
    );
    assert_eq!(
        entries(&h.artifacts),
        after_first,
        "the second submit stored nothing"
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "submitted", "{job}");
    h.stop().await;
}

/// Files of any kind count at admission, so a dataset of a few images and
/// tens of thousands of other files (the issue's stalled workers) is
/// refused at submit, naming the limit, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_too_many_files_is_refused_at_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .store(format!("sqlite://{}", tmp.path().join("lf.db").display()))
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .limits(loraflow::core::limits::Limits {
            dataset_files: 5,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    dataset(&tmp.path().join("photos"), 3);
    let local = LocalDataset::read(&tmp.path().join("photos")).unwrap();
    let uri = engine
        .artifacts()
        .upload_dataset("acme", &local)
        .await
        .unwrap()
        .uri;
    let new = loraflow::NewJob {
        spec: spec(&uri),
        request_id: None,
    };
    let err = engine
        .create_job(&TenantId::new("acme"), new)
        .await
        .unwrap_err();
    let loraflow::Error::InvalidArgument(v) = err else {
        panic!("{err:?}")
    };
    let files = v
        .iter()
        .find(|f| f.field == "dataset.uri")
        .expect("dataset.uri named");
    assert!(
        files.description.contains("6 files") && files.description.contains("limits.dataset_files"),
        "{v}"
    );
    assert_eq!(
        engine.store().feed().head().await.unwrap(),
        0,
        "nothing written"
    );
    engine.shutdown().await;
}
