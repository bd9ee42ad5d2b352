//! One `loraflow worker` runs every engine it has: native and kohya (a
//! stand-in for sd-scripts, crates/executors/tests/fixtures/kohya) side by
//! side, each job's training sent to its engine's executor, and steps routed
//! by the base models the worker has installed. A worker whose kohya setup
//! is broken starts, says why (naming the path), and serves native only.
//! The server is a real one on a loopback port; the worker a real process.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{Backend, ServerSetup, TestServer};
use common::{spec, wait_event};
use loraflow::config::SchedulerConfig;
use loraflow::core::catalogue::{Engine, ParamValue};
use loraflow::core::executor::InstalledModel;
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::{JobEvent, JobSpec};
use loraflow::core::workflow::{Requirements, StepKind, StepSpec, WorkflowSpec};

fn acme() -> TenantId {
    TenantId::new("acme")
}

fn scheduler() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(200),
        poll_timeout: Duration::from_secs(1),
        progress_interval: Duration::from_millis(200),
        ..SchedulerConfig::default()
    }
}

fn kohya_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/executors/tests/fixtures/kohya")
}

/// A kohya configuration that runs the stand-in with `sh` for base model
/// sd15, from the checkout `sd_scripts_dir`.
fn kohya_toml(root: &Path, sd_scripts_dir: &Path) -> PathBuf {
    let checkpoint = root.join("models/sd15.safetensors");
    std::fs::create_dir_all(checkpoint.parent().unwrap()).unwrap();
    std::fs::write(&checkpoint, b"base weights").unwrap();
    let path = root.join("kohya.toml");
    std::fs::write(
        &path,
        format!(
            "sd_scripts_dir = {:?}\nlauncher = [\"sh\"]\nstop_grace = \"2s\"\n\
             [scripts]\nsd15 = \"sd_scripts_standin.sh\"\n\
             [models.sd15]\ncheckpoint = {:?}\n",
            sd_scripts_dir.display().to_string(),
            checkpoint.display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// validate → label → train (on `engine`) → review → publish.
fn workflow(engine: Engine) -> WorkflowSpec {
    let step = |id: &str, kind: &str, deps: &[&str]| StepSpec::new(id, kind).after(deps);
    WorkflowSpec {
        steps: vec![
            step("validate", StepKind::VALIDATE_DATASET, &[]),
            step("label", StepKind::LABEL, &["validate"]),
            StepSpec {
                requires: Requirements {
                    engine: Some(engine),
                    ..Requirements::default()
                },
                ..step("train", StepKind::TRAIN, &["label"])
            },
            step("review", StepKind::REVIEW, &["train"]),
            step("publish", StepKind::PUBLISH, &["review"]),
        ],
    }
}

fn job(server: &TestServer, model: &str, engine: Engine, params: &[(&str, i64)]) -> JobSpec {
    let mut s = spec(&server.dataset_uri);
    s.base_model = model.into();
    s.engine = engine;
    s.workflow = Some(workflow(engine));
    for (k, v) in params {
        s.params.insert((*k).to_owned(), ParamValue::Int(*v));
    }
    s
}

/// A `loraflow worker` process; its stderr goes to a file.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn start(server: &TestServer, id: &str, kohya: &Path) -> Self {
        let root = server.tmp.path();
        let log = root.join(format!("{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_loraflow"))
            .args(["worker", "--id", id, "--token", &format!("e-{id}")])
            .arg("--server")
            .arg(format!("http://{}", server.addr))
            .arg("--artifacts")
            .arg(root.join("artifacts"))
            .arg("--publish-root")
            .arg(root.join("published"))
            .arg("--workdir")
            .arg(root.join(format!("work-{id}")))
            .arg("--models")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
            .arg("--kohya")
            .arg(kohya)
            .env("RUST_LOG", "info")
            .env_remove("LORAFLOW_TOKEN")
            .env_remove("LORAFLOW_SERVER")
            .env_remove("LORAFLOW_ARTIFACTS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// The capabilities `id` registered with, once it has.
async fn registered(server: &TestServer, id: &str) -> loraflow::core::executor::Capabilities {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(m) = server
            .engine
            .fleet()
            .into_iter()
            .find(|m| m.executor_id.as_str() == id)
        {
            return m.capabilities;
        }
        assert!(Instant::now() < deadline, "{id} did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leases_of(server: &TestServer, job: &JobId, step: &str) -> Vec<String> {
    let h = server.engine.history(&acme(), job).await.unwrap();
    h.into_iter()
        .filter_map(|e| match e.payload {
            JobEvent::StepLeased(l) if l.step_id.as_str() == step => {
                Some(l.executor_id.to_string())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_trains_native_and_kohya_jobs_and_only_models_it_has() {
    let setup = ServerSetup {
        scheduler: Some(scheduler()),
        ..Default::default()
    };
    let server = TestServer::start(Backend::Sqlite, setup).await.unwrap();
    let kohya = kohya_toml(server.tmp.path(), &kohya_fixtures());
    let worker = WorkerProcess::start(&server, "gpu-1", &kohya);

    let caps = registered(&server, "gpu-1").await;
    assert_eq!(
        caps.engines,
        [Engine::Native, Engine::Kohya].into(),
        "{caps:?}"
    );
    assert!(
        caps.base_models
            .contains(&InstalledModel::new(Engine::Native, "tiny-sd"))
            && caps
                .base_models
                .contains(&InstalledModel::new(Engine::Kohya, "sd15")),
        "{caps:?}"
    );
    assert!(
        !caps
            .base_models
            .contains(&InstalledModel::new(Engine::Native, "sd15"))
    );

    // sd15 is installed for kohya only: its native job must not train here.
    let missing =
        common::create_job(&server.engine, job(&server, "sd15", Engine::Native, &[])).await;
    let native = common::create_job(
        &server.engine,
        job(&server, "tiny-sd", Engine::Native, &[("epochs", 1)]),
    )
    .await;
    // The stand-in replays a 3-epoch run.
    let kohya_job = common::create_job(
        &server.engine,
        job(
            &server,
            "sd15",
            Engine::Kohya,
            &[("epochs", 3), ("save_every_n_epochs", 1)],
        ),
    )
    .await;
    for j in [&native, &kohya_job] {
        wait_event(&server.engine, &acme(), j, |e| {
            matches!(e, JobEvent::ReviewRequested(_))
        })
        .await;
        assert_eq!(leases_of(&server, j, "train").await, ["gpu-1"]);
    }
    let h = server.engine.history(&acme(), &kohya_job).await.unwrap();
    let trained = h
        .iter()
        .find_map(|e| match &e.payload {
            JobEvent::StepCompleted(c) if c.step_id.as_str() == "train" => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(trained.epochs.len(), 3, "kohya's three epochs: {trained:?}");

    // The native sd15 job's training was never leased; it waits for a worker
    // with the model.
    assert!(leases_of(&server, &missing, "train").await.is_empty());
    let h = server.engine.history(&acme(), &missing).await.unwrap();
    assert!(
        h.iter().any(
            |e| matches!(&e.payload, JobEvent::StepQueued(q) if q.step_id.as_str() == "train")
        ),
        "its training is queued"
    );
    let log = worker.log();
    assert!(log.contains("engines [\"native\", \"kohya\"]"), "{log}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_kohya_setup_is_refused_and_native_still_served() {
    let setup = ServerSetup {
        scheduler: Some(scheduler()),
        ..Default::default()
    };
    let server = TestServer::start(Backend::Sqlite, setup).await.unwrap();
    let nowhere = server.tmp.path().join("no-sd-scripts");
    let kohya = kohya_toml(server.tmp.path(), &nowhere);
    let worker = WorkerProcess::start(&server, "gpu-2", &kohya);

    let caps = registered(&server, "gpu-2").await;
    assert_eq!(caps.engines, [Engine::Native].into(), "{caps:?}");
    assert!(
        caps.base_models.iter().all(|m| m.engine == Engine::Native),
        "{caps:?}"
    );
    let log = worker.log();
    assert!(
        log.contains("refused")
            && log.contains("kohya")
            && log.contains(&nowhere.display().to_string()),
        "the refusal names the path: {log}"
    );

    // Native jobs still run there.
    let native = common::create_job(
        &server.engine,
        job(&server, "tiny-sd", Engine::Native, &[("epochs", 1)]),
    )
    .await;
    wait_event(&server.engine, &acme(), &native, |e| {
        matches!(e, JobEvent::ReviewRequested(_))
    })
    .await;
    assert_eq!(leases_of(&server, &native, "train").await, ["gpu-2"]);
    server.stop().await;
}

/// `--device vulkan` (or wgpu, cuda) in a build without that backend names
/// the build command that has it.
#[test]
fn a_gpu_device_without_its_feature_names_the_build_command() {
    if cfg!(feature = "vulkan") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loraflow"))
        .args([
            "worker",
            "--device",
            "vulkan",
            "--server",
            "http://127.0.0.1:9",
        ])
        .arg("--artifacts")
        .arg(tmp.path().join("artifacts"))
        .env_remove("LORAFLOW_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cargo build --release -p loraflow --features vulkan"),
        "{stderr}"
    );
}
