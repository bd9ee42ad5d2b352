//! `KohyaTrainer::run` end to end, over a real local artifact store, with a
//! stand-in for sd-scripts (tests/fixtures/kohya/sd_scripts_standin.sh: a
//! shell script that replays a real run's console output and writes its
//! files, because sd-scripts itself needs a GPU and torch).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loraflow_core::artifact::{ArtifactKind, Sha256};
use loraflow_core::catalogue::{Engine, ModelFamily, ParamValue, Params};
use loraflow_core::executor::{ArtifactIo, Executor, StepAssignment, StepContext, StepHandle};
use loraflow_core::ids::{JobId, LeaseId, StepId};
use loraflow_core::job::{DatasetRef, Naming, StepErrorKind};
use loraflow_core::workflow::StepKind;
use loraflow_executors::kohya::KohyaOptions;
use loraflow_executors::{ArtifactStore, KohyaTrainer, Labels};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kohya")
}

struct Env {
    tmp: tempfile::TempDir,
    store: ArtifactStore,
    dataset_uri: String,
    checkpoint: PathBuf,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let upload = tmp.path().join("upload");
    std::fs::create_dir_all(upload.join("more")).unwrap();
    for (name, data) in [
        ("a.png", &b"png a"[..]),
        ("a.txt", b"corgi, hat"),
        ("b.png", b"png b"),
        ("more/c.jpg", b"jpeg c"),
    ] {
        std::fs::write(upload.join(name), data).unwrap();
    }
    let store = ArtifactStore::open(tmp.path().join("artifacts").to_str().unwrap()).unwrap();
    let (dataset_uri, _) = store.upload_dir(&upload, "datasets/corgi").await.unwrap();
    let checkpoint = tmp.path().join("models/sd15.safetensors");
    std::fs::create_dir_all(checkpoint.parent().unwrap()).unwrap();
    std::fs::write(&checkpoint, b"base weights").unwrap();
    Env {
        tmp,
        store,
        dataset_uri,
        checkpoint,
    }
}

/// Settings that run the stand-in with `sh` in place of `train_network.py`.
fn options(env: &Env, fail: Option<&str>) -> KohyaOptions {
    let mut o = KohyaOptions::new(fixtures()).with_model("sd15", &env.checkpoint);
    o.launcher = vec!["sh".into()];
    o.scripts.sd15 = "sd_scripts_standin.sh".into();
    if let Some(mode) = fail {
        o.extra_args = vec!["--standin_fail".into(), mode.into()];
    }
    o.stop_grace = Duration::from_secs(2);
    o
}

fn assignment(env: &Env) -> StepAssignment {
    let params: Params = [
        ("epochs", ParamValue::Int(3)),
        ("num_repeats", ParamValue::Int(10)),
        ("batch_size", ParamValue::Int(2)),
        ("resolution", ParamValue::Int(512)),
        ("network_dim", ParamValue::Int(32)),
        ("network_alpha", ParamValue::Float(16.0)),
        ("optimizer", ParamValue::Str("adamw8bit".into())),
        ("save_every_n_epochs", ParamValue::Int(1)),
        ("seed", ParamValue::Int(42)),
        ("trigger_word", ParamValue::Str("sks".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    StepAssignment {
        job_id: JobId::new("job-1"),
        step_id: StepId::new("train"),
        kind: "train".into(),
        attempt: 1,
        lease_id: LeaseId::new("lease-1"),
        params,
        step_params: serde_json::Value::Null,
        base_model: "sd15".into(),
        engine: Engine::Kohya,
        model_family: Some(ModelFamily::Sd15),
        base_model_uri: None,
        dataset: DatasetRef {
            uri: env.dataset_uri.clone(),
            sha256: None,
        },
        sample_prompts: vec!["sks, a corgi on a beach".into()],
        naming: Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        },
        inputs: vec![],
        epochs: vec![],
        approved_epoch: None,
        approved_step: None,
    }
}

fn context(env: &Env, step: &StepAssignment, work: &str) -> (StepContext, StepHandle) {
    let io = Arc::new(
        env.store
            .for_step(&step.job_id, &step.step_id, step.attempt),
    );
    StepContext::new(io, env.tmp.path().join(work), tracing::Span::none())
}

#[tokio::test]
async fn a_run_stores_every_epoch_with_its_loss_and_reports_progress() {
    let env = env().await;
    let mut step = assignment(&env);
    // Labels from the label step win over the dataset's sidecars.
    let labels: Labels = serde_json::from_value(serde_json::json!({
        "images": {
            "a.png": {"caption": "sks, corgi, red hat", "tags": [], "source": "sidecar"},
            "b.png": {"caption": "sks, corgi", "tags": [], "source": "template"}
        },
        "tag_frequency": {}
    }))
    .unwrap();
    let labels_path = env.tmp.path().join("labels.json");
    std::fs::write(&labels_path, serde_json::to_vec(&labels).unwrap()).unwrap();
    let label_io = env.store.for_step(&step.job_id, &StepId::new("label"), 1);
    step.inputs.push(
        label_io
            .put(&labels_path, "labels.json", ArtifactKind::Labels, None)
            .await
            .unwrap(),
    );

    let trainer = KohyaTrainer::new(options(&env, None)).unwrap();
    let (ctx, handle) = context(&env, &step, "work");
    let out = trainer.run(&step, &ctx).await.unwrap();

    let epochs: Vec<_> = out
        .epochs
        .iter()
        .map(|e| (e.epoch, e.lora.as_ref().unwrap().name.as_str(), e.loss))
        .collect();
    assert_eq!(
        epochs,
        [
            (1, "corgi-000001.safetensors", Some(0.122)),
            (2, "corgi-000002.safetensors", Some(0.114)),
            (3, "corgi.safetensors", Some(0.106)),
        ]
    );
    let last = out.epochs[2].lora.as_ref().unwrap();
    assert_eq!(last.kind, ArtifactKind::Lora);
    assert_eq!(last.epoch, Some(3));
    let bytes = env.store.get_verified(last).await.unwrap();
    assert_eq!(&bytes[..], b"stand-in LoRA weights (.safetensors)\n");
    assert_eq!(last.sha256, Sha256::of(&bytes));

    let progress = handle.latest().unwrap();
    assert_eq!(progress.percent, 100.0);
    assert_eq!(
        (progress.step, progress.total_steps),
        (Some(180), Some(180))
    );
    assert_eq!(progress.epoch, Some(3));
    assert_eq!(out.outputs["total_steps"], 180);
    assert_eq!(out.outputs["images"], 3);
    assert_eq!(out.outputs["captions_from_labels"], 2);
    assert_eq!(
        out.outputs["uncaptioned"],
        serde_json::json!(["more/c.jpg"])
    );

    // The configs are stored beside the weights, and are what ran.
    let names: Vec<_> = out.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["training_config.toml", "dataset_config.toml"]);
    let training: toml::Table = toml::from_str(
        std::str::from_utf8(&env.store.get_verified(&out.artifacts[0]).await.unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(training["optimizer_type"].as_str(), Some("AdamW8bit"));
    assert_eq!(training["max_train_epochs"].as_integer(), Some(3));
    let work = env.tmp.path().join("work");
    assert_eq!(
        std::fs::read_to_string(work.join("train/10_corgi/a.txt")).unwrap(),
        "sks, corgi, red hat\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("sample_prompts.txt")).unwrap(),
        "sks, a corgi on a beach --w 512 --h 512 --d 42 --s 20 --l 7.5\n"
    );
}

#[tokio::test]
async fn cuda_out_of_memory_is_a_retryable_out_of_memory_error() {
    let env = env().await;
    let step = assignment(&env);
    let trainer = KohyaTrainer::new(options(&env, Some("oom"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::OutOfMemory);
    assert!(err.retryable);
    assert!(
        err.message
            .contains("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn another_failure_is_internal_with_the_last_lines_of_output() {
    let env = env().await;
    let step = assignment(&env);
    let trainer = KohyaTrainer::new(options(&env, Some("bitsandbytes"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Internal);
    assert!(!err.retryable);
    let m = &err.message;
    assert!(
        m.starts_with(
            "sd-scripts exited unsuccessfully (exit status: 1): ImportError: No bitsandbytes"
        ),
        "{m}"
    );
    let tail = m.split_once("last lines of output:\n").unwrap().1;
    assert!(tail.lines().count() <= 20, "{tail}");
    assert!(
        tail.contains("\nprepare optimizer, data loader etc.\n"),
        "{tail}"
    );
    assert!(tail.ends_with(
        "ImportError: No bitsandbytes / bitsandbytesがインストールされていないようです"
    ));
}

/// Whether the process is still there once a kill has had time to land:
/// signals are delivered asynchronously, so a process killed a moment ago
/// may still be running. Waits up to 10 s for it to go.
fn alive(pid: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(pid) {
        if std::time::Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn running(pid: &str) -> bool {
    // A killed child that nobody has reaped yet is a zombie: it is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => std::process::Command::new("kill")
            .args(["-0", pid])
            .status()
            .is_ok_and(|s| s.success()),
    }
}

#[tokio::test]
async fn cancelling_stops_the_script_and_its_children() {
    let env = env().await;
    let step = assignment(&env);
    let trainer = Arc::new(KohyaTrainer::new(options(&env, Some("hang"))).unwrap());
    let (ctx, handle) = context(&env, &step, "work");
    let run = {
        let (trainer, step, ctx) = (trainer.clone(), step.clone(), ctx.clone());
        tokio::spawn(async move { trainer.run(&step, &ctx).await })
    };
    // Wait until the stand-in saved epoch 1 and waits in its child.
    let child_pid = env.tmp.path().join("work/output/standin_child.pid");
    let started = Instant::now();
    while !child_pid.exists() || handle.latest().and_then(|p| p.step) < Some(60) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stand-in never saved epoch 1: {:?}",
            handle.latest()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    handle.cancel();
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Cancelled);
    for file in ["standin.pid", "standin_child.pid"] {
        let pid = std::fs::read_to_string(env.tmp.path().join("work/output").join(file)).unwrap();
        assert!(!alive(pid.trim()), "{file} {pid} still runs");
    }
}

#[tokio::test]
async fn a_run_past_the_timeout_is_stopped() {
    let env = env().await;
    let step = assignment(&env);
    let mut o = options(&env, Some("hang"));
    o.timeout = Duration::from_secs(1);
    let trainer = KohyaTrainer::new(o).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Internal);
    assert!(
        err.message.contains("ran past the timeout of 1s"),
        "{}",
        err.message
    );
    // On a loaded machine the timeout may fire before the stand-in started
    // its child; whatever did start must be gone.
    for file in ["standin.pid", "standin_child.pid"] {
        if let Ok(pid) = std::fs::read_to_string(env.tmp.path().join("work/output").join(file)) {
            assert!(!alive(pid.trim()), "{file} {pid} still runs");
        }
    }
}

#[tokio::test]
async fn a_run_that_saves_no_final_lora_did_not_finish() {
    let env = env().await;
    let step = assignment(&env);
    let trainer = KohyaTrainer::new(options(&env, Some("no_output"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Internal);
    assert!(
        err.message.contains("wrote no corgi.safetensors"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("corgi-000002.safetensors"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_unconfigured_base_model_is_invalid_input_naming_the_configured_ones() {
    let env = env().await;
    let mut step = assignment(&env);
    step.base_model = "sdxl".into();
    step.model_family = Some(ModelFamily::Sdxl);
    let trainer = KohyaTrainer::new(options(&env, None)).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "base model \"sdxl\" has no checkpoint in the kohya settings; configured base models: sd15"
    );
}

#[tokio::test]
async fn a_missing_script_is_unavailable_naming_the_path() {
    let env = env().await;
    let step = assignment(&env);
    let mut o = options(&env, None);
    o.scripts.sd15 = "train_network.py".into();
    let trainer = KohyaTrainer::new(o).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Unavailable);
    assert!(err.retryable);
    let expected = fixtures().join("train_network.py");
    assert!(
        err.message.contains(&expected.display().to_string()),
        "{}",
        err.message
    );
}

#[test]
fn it_is_a_train_executor_for_the_kohya_engine() {
    let trainer = KohyaTrainer::new(KohyaOptions::new("/opt/sd-scripts")).unwrap();
    assert_eq!(trainer.kinds(), vec![StepKind::from("train")]);
    assert_eq!(trainer.engines(), [Engine::Kohya]);
}
