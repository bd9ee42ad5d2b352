//! `AiToolkitTrainer::run` end to end, over a real local artifact store,
//! with a stand-in for ai-toolkit (tests/fixtures/ai_toolkit/run.py: a
//! python script that reads the job config as ai-toolkit does, replays its
//! console output and writes its files where it writes them, because
//! ai-toolkit itself needs a GPU and torch), and the generated job configs
//! checked against the shape of ai-toolkit's example configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loraflow_core::artifact::{ArtifactKind, Sha256};
use loraflow_core::catalogue::{Catalogue, Engine, ModelFamily, ParamValue, Params};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepHandle};
use loraflow_core::ids::{JobId, LeaseId, StepId};
use loraflow_core::job::{DatasetRef, Naming, StepErrorKind};
use loraflow_core::sampling::SampleSettings;
use loraflow_core::workflow::StepKind;
use loraflow_executors::aitoolkit::config::{self, JobInputs, RunPaths};
use loraflow_executors::aitoolkit::params::{StepPlan, TrainParams};
use loraflow_executors::{AiToolkitOptions, AiToolkitTrainer, ArtifactStore};
use serde_norway::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ai_toolkit")
}

struct Env {
    tmp: tempfile::TempDir,
    store: ArtifactStore,
    dataset_uri: String,
    models: PathBuf,
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
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("FLUX.1-dev")).unwrap();
    std::fs::write(models.join("sd_xl_base_1.0.safetensors"), b"base weights").unwrap();
    Env {
        tmp,
        store,
        dataset_uri,
        models,
    }
}

/// Settings that run the stand-in `run.py` with this machine's python.
fn options(env: &Env, mode: Option<&str>) -> AiToolkitOptions {
    let mut o = AiToolkitOptions::new(fixtures())
        .with_model("sdxl", "sd_xl_base_1.0.safetensors", ModelFamily::Sdxl)
        .with_model("flux-dev", "FLUX.1-dev", ModelFamily::Flux);
    o.models_dir = Some(env.models.clone());
    o.python = "python3".into();
    if let Some(mode) = mode {
        o.env.insert("STANDIN_MODE".into(), mode.into());
    }
    o.stop_grace = Duration::from_secs(2);
    o
}

fn assignment(env: &Env, model: &str, family: ModelFamily) -> StepAssignment {
    let params: Params = [
        ("epochs", ParamValue::Int(3)),
        ("num_repeats", ParamValue::Int(10)),
        ("batch_size", ParamValue::Int(2)),
        ("resolution", ParamValue::Int(1024)),
        ("network_dim", ParamValue::Int(16)),
        ("network_alpha", ParamValue::Float(8.0)),
        ("learning_rate", ParamValue::Float(1e-4)),
        ("optimizer", ParamValue::Str("adamw8bit".into())),
        ("lr_scheduler", ParamValue::Str("constant".into())),
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
        base_model: model.into(),
        engine: Engine::AiToolkit,
        model_family: Some(family),
        base_model_uri: None,
        dataset: DatasetRef {
            uri: env.dataset_uri.clone(),
            sha256: None,
        },
        sample_prompts: vec!["[trigger] a corgi on a beach".into(), "sks in a hat".into()],
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

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("{path}: no {key}"));
    }
    cur
}

#[tokio::test]
async fn an_sdxl_run_stores_every_epoch_with_samples_and_reports_progress() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    let trainer = AiToolkitTrainer::new(options(&env, None)).unwrap();
    let (ctx, handle) = context(&env, &step, "work");
    let out = trainer.run(&step, &ctx).await.unwrap();

    // 3 images × 10 repeats / batch 2 = 15 steps an epoch, 45 in all.
    assert_eq!(out.outputs["steps_per_epoch"], 15);
    assert_eq!(out.outputs["total_steps"], 45);
    let epochs: Vec<_> = out
        .epochs
        .iter()
        .map(|e| {
            (
                e.epoch,
                e.lora.as_ref().unwrap().name.as_str(),
                e.samples.len(),
            )
        })
        .collect();
    assert_eq!(
        epochs,
        [
            (1, "corgi_000000015.safetensors", 2),
            (2, "corgi_000000030.safetensors", 2),
            (3, "corgi.safetensors", 2),
        ]
    );
    for e in &out.epochs {
        let loss = e.loss.expect("each epoch has a loss");
        assert!((0.2..=0.5).contains(&loss), "epoch {} loss {loss}", e.epoch);
        for s in &e.samples {
            assert_eq!(s.kind, ArtifactKind::Sample);
            assert_eq!(s.epoch, Some(e.epoch));
        }
    }
    // Loss falls in the replayed run.
    assert!(out.epochs[0].loss > out.epochs[2].loss);
    let last = out.epochs[2].lora.as_ref().unwrap();
    assert_eq!((last.kind, last.epoch), (ArtifactKind::Lora, Some(3)));
    let bytes = env.store.get_verified(last).await.unwrap();
    assert_eq!(&bytes[..], b"stand-in LoRA weights final\n");
    assert_eq!(last.sha256, Sha256::of(&bytes));

    let progress = handle.latest().unwrap();
    assert_eq!(progress.percent, 100.0);
    assert_eq!((progress.step, progress.total_steps), (Some(45), Some(45)));
    assert_eq!(progress.epoch, Some(3));
    assert!(progress.loss.is_some() && progress.samples_per_sec.is_some());
    assert_eq!(out.outputs["images"], 3);
    assert_eq!(
        out.outputs["uncaptioned"],
        serde_json::json!(["b.png", "more/c.jpg"])
    );

    // run.py ran in the checkout, with the job's seed.
    let work = env.tmp.path().join("work");
    let ran: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("output/standin_env.json")).unwrap())
            .unwrap();
    assert_eq!(ran["SEED"], "42");
    assert_eq!(ran["cwd"], fixtures().display().to_string());

    // The config is stored beside the weights, and is what ran.
    assert_eq!(out.artifacts.len(), 1);
    assert_eq!(out.artifacts[0].name, "job_config.yaml");
    let stored = env.store.get_verified(&out.artifacts[0]).await.unwrap();
    let yaml: Value = serde_norway::from_slice(&stored).unwrap();
    assert_eq!(at(&yaml, "config.name").as_str(), Some("corgi"));
    let p = at(&yaml, "config.process.0");
    assert_eq!(at(p, "model.arch").as_str(), Some("sdxl"));
    assert_eq!(at(p, "model.is_xl").as_bool(), Some(true));
    assert_eq!(
        at(p, "model.name_or_path").as_str(),
        Some(
            env.models
                .join("sd_xl_base_1.0.safetensors")
                .to_str()
                .unwrap()
        )
    );
    assert_eq!(at(p, "train.steps").as_u64(), Some(45));
    assert_eq!(at(p, "save.save_every").as_u64(), Some(15));
    assert_eq!(at(p, "sample.sample_every").as_u64(), Some(15));
    assert_eq!(at(p, "train.noise_scheduler").as_str(), Some("ddpm"));
    assert_eq!(at(p, "datasets.0.default_caption").as_str(), Some("sks"));
    assert_eq!(
        std::fs::read_to_string(work.join("images/a.txt")).unwrap(),
        "corgi, hat\n"
    );
}

/// The keys of ai-toolkit's `config/examples/train_lora_flux_24gb.yaml` that
/// its code reads (`toolkit/config_modules.py`), as `section.key` under
/// `config.process[0]`: the generated FLUX.1 config has each of them.
const FLUX_EXAMPLE_KEYS: [&str; 36] = [
    "type",
    "training_folder",
    "device",
    "network.type",
    "network.linear",
    "network.linear_alpha",
    "save.dtype",
    "save.save_every",
    "save.max_step_saves_to_keep",
    "save.push_to_hub",
    "datasets.0.folder_path",
    "datasets.0.caption_ext",
    "datasets.0.caption_dropout_rate",
    "datasets.0.shuffle_tokens",
    "datasets.0.cache_latents_to_disk",
    "datasets.0.resolution",
    "train.batch_size",
    "train.steps",
    "train.gradient_accumulation_steps",
    "train.train_unet",
    "train.train_text_encoder",
    "train.gradient_checkpointing",
    "train.noise_scheduler",
    "train.optimizer",
    "train.lr",
    "train.dtype",
    "model.name_or_path",
    "model.is_flux",
    "model.quantize",
    "sample.sampler",
    "sample.sample_every",
    "sample.width",
    "sample.height",
    "sample.prompts",
    "sample.seed",
    "sample.guidance_scale",
];

fn generated(family: ModelFamily, model_id: &str, params: &Params) -> Value {
    let catalogue = Catalogue::builtin()
        .with_engine_rules(loraflow_executors::engine_rules())
        .unwrap();
    let model = catalogue.base_model(&model_id.into()).unwrap();
    let resolved = catalogue
        .schema
        .resolve(model, Engine::AiToolkit, None, params)
        .unwrap();
    let p = TrainParams::from_params(&resolved).unwrap();
    let plan = StepPlan::new(&p, 12);
    let o = AiToolkitOptions::new("/opt/ai-toolkit").with_model(model_id, "/models/x", family);
    let paths = RunPaths {
        training_folder: "/work/output".into(),
        image_dir: "/work/images".into(),
        name: "corgi".into(),
    };
    let text = config::to_yaml(
        &config::job_config(&JobInputs {
            params: &p,
            plan: &plan,
            family,
            model_id,
            model: &o.models[model_id],
            name_or_path: "/models/x",
            options: &o,
            paths: &paths,
            sampling: &SampleSettings::of(
                &resolved,
                &["a ${HOME} corgi\non grass".into()],
                &SampleSettings::default(),
            ),
            default_caption: "corgi",
        })
        .unwrap(),
    )
    .unwrap();
    serde_norway::from_str(&text).unwrap()
}

#[test]
fn the_flux_config_has_the_shape_of_ai_toolkits_flux_example() {
    let yaml = generated(ModelFamily::Flux, "flux-dev", &Params::new());
    assert_eq!(at(&yaml, "job").as_str(), Some("extension"));
    assert_eq!(at(&yaml, "meta.name").as_str(), Some("[name]"));
    let p = at(&yaml, "config.process.0");
    for key in FLUX_EXAMPLE_KEYS {
        at(p, key);
    }
    let s = |k: &str| at(p, k).as_str().unwrap().to_owned();
    assert_eq!(s("type"), "sd_trainer");
    assert_eq!(s("device"), "cuda:0");
    assert_eq!(s("network.type"), "lora");
    assert_eq!(s("train.noise_scheduler"), "flowmatch");
    assert_eq!(s("sample.sampler"), "flowmatch");
    assert_eq!(s("model.arch"), "flux");
    assert_eq!(s("train.optimizer"), "adamw8bit");
    assert_eq!(s("train.lr_scheduler"), "constant");
    assert_eq!(s("train.dtype"), "bf16");
    assert_eq!(s("save.dtype"), "float16");
    assert_eq!(at(p, "model.is_flux").as_bool(), Some(true));
    assert_eq!(at(p, "model.quantize").as_bool(), Some(true));
    assert_eq!(at(p, "train.train_text_encoder").as_bool(), Some(false));
    // The catalogue's ai-toolkit defaults: batch 1, rank 16 / alpha 16.
    assert_eq!(at(p, "train.batch_size").as_u64(), Some(1));
    assert_eq!(at(p, "network.linear").as_u64(), Some(16));
    assert_eq!(at(p, "network.linear_alpha").as_f64(), Some(16.0));
    assert_eq!(at(p, "train.lr").as_f64(), Some(1e-4));
    // 12 images × 10 repeats, batch 1: 120 steps an epoch, 10 epochs.
    assert_eq!(at(p, "train.steps").as_u64(), Some(1200));
    assert_eq!(at(p, "save.save_every").as_u64(), Some(120));
    assert_eq!(at(p, "save.max_step_saves_to_keep").as_u64(), Some(10));
    let res: Vec<_> = at(p, "datasets.0.resolution")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(res, [1024]);
    assert_eq!(
        (
            at(p, "sample.width").as_u64(),
            at(p, "sample.height").as_u64()
        ),
        (Some(1024), Some(1024))
    );
    // FLUX.1 takes no DDPM weighting, v-prediction or text-encoder training.
    for absent in ["train.min_snr_gamma", "model.is_v_pred", "model.is_xl"] {
        let (section, key) = absent.split_once('.').unwrap();
        assert!(at(p, section).get(key).is_none(), "{absent}");
    }
    // A prompt is one line, and cannot reach the worker's environment.
    let prompts = at(p, "sample.prompts").as_sequence().unwrap();
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].as_str(), Some("a $ {HOME} corgi on grass"));
}

#[test]
fn the_sdxl_config_trains_the_unet_with_ddpm_and_takes_the_jobs_choices() {
    let given: Params = [
        ("prediction_type", ParamValue::Str("v_prediction".into())),
        ("lr_scheduler", ParamValue::Str("linear".into())),
        ("min_snr_gamma", ParamValue::Float(5.0)),
        ("gradient_accumulation", ParamValue::Int(2)),
        ("shuffle_tags", ParamValue::Bool(true)),
        ("keep_tokens", ParamValue::Int(1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let yaml = generated(ModelFamily::Sdxl, "sdxl", &given);
    let p = at(&yaml, "config.process.0");
    for key in FLUX_EXAMPLE_KEYS.iter().filter(|k| **k != "model.is_flux") {
        at(p, key);
    }
    assert_eq!(at(p, "model.arch").as_str(), Some("sdxl"));
    assert_eq!(at(p, "model.is_xl").as_bool(), Some(true));
    assert_eq!(at(p, "model.is_v_pred").as_bool(), Some(true));
    assert_eq!(at(p, "model.quantize").as_bool(), Some(false));
    assert_eq!(at(p, "train.noise_scheduler").as_str(), Some("ddpm"));
    assert_eq!(at(p, "sample.sampler").as_str(), Some("ddpm"));
    assert_eq!(at(p, "train.min_snr_gamma").as_f64(), Some(5.0));
    assert_eq!(at(p, "train.gradient_accumulation").as_u64(), Some(2));
    assert_eq!(at(p, "train.gradient_accumulation_steps").as_u64(), Some(1));
    assert_eq!(at(p, "train.lr_scheduler").as_str(), Some("linear"));
    assert_eq!(
        at(p, "train.lr_scheduler_params.end_factor").as_f64(),
        Some(0.0)
    );
    assert_eq!(at(p, "datasets.0.shuffle_tokens").as_bool(), Some(true));
    assert_eq!(at(p, "datasets.0.keep_tokens").as_u64(), Some(1));
    // 12 images × 10 repeats / batch 1 / accumulation 2 = 60 steps an epoch.
    assert_eq!(at(p, "save.save_every").as_u64(), Some(60));
}

#[tokio::test]
async fn a_flux_run_uses_the_model_folder_under_models_dir() {
    let env = env().await;
    let step = assignment(&env, "flux-dev", ModelFamily::Flux);
    let trainer = AiToolkitTrainer::new(options(&env, None)).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let out = trainer.run(&step, &ctx).await.unwrap();
    assert_eq!(out.epochs.len(), 3);
    assert_eq!(
        out.outputs["model"],
        env.models.join("FLUX.1-dev").display().to_string()
    );
    assert_eq!(out.outputs["arch"], "flux");
}

#[tokio::test]
async fn running_out_of_gpu_memory_is_a_retryable_out_of_memory_error() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    let trainer = AiToolkitTrainer::new(options(&env, Some("oom"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::OutOfMemory, "{}", err.message);
    assert!(err.retryable);
    assert!(
        err.message.contains("OOM during training step"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("RuntimeError: OOM during training step 3 times in a row, aborting training"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_model_ai_toolkit_cannot_load_is_unavailable_with_its_words() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    let trainer = AiToolkitTrainer::new(options(&env, Some("model_missing"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Unavailable, "{}", err.message);
    assert!(
        err.message
            .starts_with("base model \"sdxl\" is not available to ai-toolkit: "),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("is not a local folder and is not a valid model identifier"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_missing_local_model_is_refused_before_anything_runs() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    std::fs::remove_file(env.models.join("sd_xl_base_1.0.safetensors")).unwrap();
    let trainer = AiToolkitTrainer::new(options(&env, None)).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Unavailable);
    assert!(
        err.message.contains(&format!(
            "{} does not exist",
            env.models.join("sd_xl_base_1.0.safetensors").display()
        )),
        "{}",
        err.message
    );
    assert!(!env.tmp.path().join("work/output").exists());
}

#[tokio::test]
async fn a_run_that_saves_no_final_lora_did_not_finish() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    let trainer = AiToolkitTrainer::new(options(&env, Some("no_output"))).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Internal);
    assert!(
        err.message.contains("wrote no corgi.safetensors"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("corgi_000000030.safetensors"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_unconfigured_base_model_is_invalid_input_naming_the_configured_ones() {
    let env = env().await;
    let mut step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    step.base_model = "sd15".into();
    step.model_family = Some(ModelFamily::Sd15);
    let trainer = AiToolkitTrainer::new(options(&env, None)).unwrap();
    let (ctx, _handle) = context(&env, &step, "work");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(
        err.message.starts_with(
            "base model \"sd15\" is not configured for ai-toolkit; configured base models: flux-dev, sdxl"
        ),
        "{}",
        err.message
    );
}

/// Whether the process is still there once a kill has had time to land.
fn alive(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        if Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn running(pid: &str) -> bool {
    // A killed child nobody has reaped yet is a zombie: it is gone.
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
async fn cancelling_stops_ai_toolkit_and_its_children() {
    let env = env().await;
    let step = assignment(&env, "sdxl", ModelFamily::Sdxl);
    let trainer = Arc::new(AiToolkitTrainer::new(options(&env, Some("hang"))).unwrap());
    let (ctx, handle) = context(&env, &step, "work");
    let run = {
        let (trainer, step, ctx) = (trainer.clone(), step.clone(), ctx.clone());
        tokio::spawn(async move { trainer.run(&step, &ctx).await })
    };
    let child_pid = env.tmp.path().join("work/output/standin_child.pid");
    let started = Instant::now();
    while !child_pid.exists() || handle.latest().and_then(|p| p.step) < Some(15) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
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

#[test]
fn it_is_a_train_executor_for_the_ai_toolkit_engine() {
    let trainer = AiToolkitTrainer::new(AiToolkitOptions::new("/opt/ai-toolkit")).unwrap();
    assert_eq!(trainer.kinds(), vec![StepKind::from("train")]);
    assert_eq!(trainer.engines(), [Engine::AiToolkit]);
}

#[test]
fn settings_load_from_toml() {
    let o: AiToolkitOptions = toml::from_str(
        r#"
        ai_toolkit_dir = "/opt/ai-toolkit"
        python = "/opt/ai-toolkit/venv/bin/python"
        models_dir = "/models"
        timeout = "6h"
        env = { HF_HOME = "/models/hf" }
        [models.flux-dev]
        name_or_path = "black-forest-labs/FLUX.1-dev"
        family = "flux"
        quantize = true
        extra = { low_vram = true }
        [extra.train]
        ema_config = { use_ema = true, ema_decay = 0.99 }
        "#,
    )
    .unwrap();
    assert_eq!(o.timeout, Duration::from_secs(6 * 3600));
    assert_eq!(o.models["flux-dev"].family, Some(ModelFamily::Flux));
    AiToolkitTrainer::new(o).unwrap();
}
