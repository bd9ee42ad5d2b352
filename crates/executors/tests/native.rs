//! The native engine end to end over a real local artifact store: `NativeTrainer` trains the
//! demo model (`assets/tiny-sd`) on the demo dataset with labels from a labelling step, then
//! `NativeSampler` renders every epoch's LoRA (and the base model) into samples and a contact
//! sheet; validation losses, the loss plot and TensorBoard files come back; cancellation and
//! bad parameters are typed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use loraflow_core::artifact::{ArtifactKind, EpochOutput};
use loraflow_core::catalogue::{Engine, ParamValue, Params};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepHandle};
use loraflow_core::ids::{JobId, LeaseId, StepId};
use loraflow_core::job::{DatasetRef, Naming, StepErrorKind, StepProgress};
use loraflow_executors::label::{CaptionSource, ImageLabel};
use loraflow_executors::native::{NativeOptions, contact_sheet, loss_plot};
use loraflow_executors::tensorboard;
use loraflow_executors::{ArtifactStore, Labels, NativeSampler, NativeTrainer};
use loraflow_trainer::sample::png::read_png_text;
use loraflow_trainer::tensor_file::TensorFile;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

struct Env {
    tmp: tempfile::TempDir,
    store: ArtifactStore,
    dataset_uri: String,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(tmp.path().join("artifacts").to_str().unwrap()).unwrap();
    let (dataset_uri, n) = store
        .upload_dir(&assets().join("demo-dataset"), "datasets/demo")
        .await
        .unwrap();
    assert_eq!(n, 160, "images and captions");
    Env {
        tmp,
        store,
        dataset_uri,
    }
}

/// The catalogue's resolved parameters for `tiny-sd` on the native engine.
fn tiny_sd_params() -> Params {
    [
        ("epochs", ParamValue::Int(2)),
        ("num_repeats", ParamValue::Int(1)),
        ("batch_size", ParamValue::Int(2)),
        ("resolution", ParamValue::Int(64)),
        ("learning_rate", ParamValue::Float(1e-3)),
        ("unet_lr", ParamValue::Float(1e-3)),
        ("text_encoder_lr", ParamValue::Float(5e-5)),
        ("lr_scheduler", ParamValue::Str("cosine".into())),
        ("lr_warmup_steps", ParamValue::Int(0)),
        ("optimizer", ParamValue::Str("adamw".into())),
        ("network_dim", ParamValue::Int(4)),
        ("network_alpha", ParamValue::Float(4.0)),
        ("min_snr_gamma", ParamValue::Float(5.0)),
        ("noise_offset", ParamValue::Float(0.0)),
        ("clip_skip", ParamValue::Int(1)),
        ("prediction_type", ParamValue::Str("epsilon".into())),
        ("shuffle_tags", ParamValue::Bool(true)),
        ("keep_tokens", ParamValue::Int(1)),
        ("caption_dropout", ParamValue::Float(0.0)),
        ("save_every_n_epochs", ParamValue::Int(1)),
        ("max_grad_norm", ParamValue::Float(1.0)),
        ("gradient_accumulation", ParamValue::Int(1)),
        ("seed", ParamValue::Int(42)),
        ("auto_adjust", ParamValue::Bool(true)),
        ("trigger_word", ParamValue::Str("sks".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn assignment(kind: &str, env: &Env, params: Params) -> StepAssignment {
    StepAssignment {
        job_id: JobId::new("job-native"),
        step_id: StepId::new(kind),
        kind: kind.into(),
        attempt: 1,
        lease_id: LeaseId::new("lease-1"),
        params,
        step_params: serde_json::Value::Null,
        base_model: "tiny-sd".into(),
        engine: Engine::Native,
        model_family: None,
        base_model_uri: None,
        dataset: DatasetRef {
            uri: env.dataset_uri.clone(),
            sha256: None,
        },
        sample_prompts: vec!["sks, a red circle".into(), "sks, a blue square".into()],
        naming: Naming {
            subject: "demo shapes".into(),
            version: "v1".into(),
        },
        inputs: vec![],
        epochs: vec![],
        approved_epoch: None,
        approved_step: None,
    }
}

fn context(env: &Env, step: &StepAssignment, dir: &str) -> (StepContext, StepHandle) {
    let io = Arc::new(
        env.store
            .for_step(&step.job_id, &step.step_id, step.attempt),
    );
    StepContext::new(io, env.tmp.path().join(dir), tracing::Span::none())
}

/// Every progress report until the context is dropped.
fn collect(mut handle: StepHandle) -> tokio::task::JoinHandle<Vec<StepProgress>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while handle.changed().await {
            if let Some(p) = handle.latest() {
                seen.push(p);
            }
        }
        seen
    })
}

async fn local_copy(
    env: &Env,
    artifact: &loraflow_core::artifact::Artifact,
    dir: &Path,
) -> PathBuf {
    let bytes = env.store.get_verified(artifact).await.unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(&artifact.name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_training_then_sampling_on_the_demo_model() {
    let env = env().await;
    let options = NativeOptions::new(assets());

    // A labelling step's output: its caption replaces the image's sidecar.
    let label_step = assignment("label", &env, Params::new());
    let labels = Labels {
        images: [(
            "red_circle_white1.png".to_string(),
            ImageLabel {
                caption: "sks, a circle relabelled by hand".into(),
                tags: vec![],
                source: CaptionSource::Command,
            },
        )]
        .into(),
        tag_frequency: Default::default(),
    };
    let labels_path = env.tmp.path().join("labels.json");
    std::fs::write(&labels_path, serde_json::to_vec(&labels).unwrap()).unwrap();
    let labels_artifact = {
        use loraflow_core::executor::ArtifactIo;
        env.store
            .for_step(&label_step.job_id, &label_step.step_id, 1)
            .put(&labels_path, "labels.json", ArtifactKind::Labels, None)
            .await
            .unwrap()
    };

    let mut params = tiny_sd_params();
    params.insert("validation_split".into(), ParamValue::Float(0.25));
    let mut train = assignment("train", &env, params);
    train.inputs.push(labels_artifact);
    let trainer = NativeTrainer::new(options.clone()).unwrap();
    assert_eq!(trainer.engines(), vec![Engine::Native]);
    let (ctx, handle) = context(&env, &train, "work-train");
    let progress = collect(handle);
    let out = trainer.run(&train, &ctx).await.unwrap();
    drop(ctx);
    let progress = progress.await.unwrap();

    // Progress: steps with loss and throughput, up to 100 %.
    let steps: Vec<_> = progress
        .iter()
        .filter(|p| p.step.unwrap_or(0) > 0)
        .collect();
    assert!(!steps.is_empty(), "{progress:?}");
    let last = steps.last().unwrap();
    assert_eq!(last.percent, 100.0);
    assert_eq!(last.epoch, Some(2));
    assert!(last.loss.is_some_and(f64::is_finite));
    assert!(last.samples_per_sec.is_some_and(|s| s > 0.0));

    // One LoRA per epoch, with its mean loss, its validation loss and the step it was saved at.
    assert_eq!(
        out.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![1, 2]
    );
    for e in &out.epochs {
        let lora = e.lora.as_ref().unwrap();
        assert_eq!(lora.kind, ArtifactKind::Lora);
        assert_eq!(lora.epoch, Some(e.epoch));
        assert!(e.loss.is_some_and(f64::is_finite));
        assert!(e.validation_loss.is_some_and(|l| l.is_finite() && l > 0.0));
    }
    let saved_at: Vec<u64> = out.epochs.iter().map(|e| e.step.unwrap()).collect();
    assert!(
        saved_at[0] > 0 && saved_at[1] == 2 * saved_at[0],
        "{saved_at:?}"
    );
    // 20 of the 80 images were held out; the progress carried their loss.
    assert_eq!(
        out.outputs["validation_images"].as_array().unwrap().len(),
        20
    );
    assert!(out.outputs["base_validation_loss"].as_f64().is_some());
    assert!(
        progress
            .iter()
            .any(|p| p.validation_loss == out.epochs[1].validation_loss),
        "the last validation loss was reported"
    );
    let kinds: Vec<_> = out
        .artifacts
        .iter()
        .map(|a| (a.kind, a.name.as_str()))
        .collect();
    assert!(
        kinds.contains(&(ArtifactKind::Report, "loss_curve.png")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&(ArtifactKind::Report, "loss_history.json")));
    assert_eq!(out.outputs["engine"], "native");
    assert_eq!(out.outputs["images"], 60);
    assert!(
        out.outputs["loss_curve"]
            .as_str()
            .unwrap()
            .ends_with("loss_curve.png")
    );

    // The LoRA files load back: kohya keys for UNet and text encoder, sd-scripts metadata,
    // the labelled caption counted in the tag frequencies.
    let files = env.tmp.path().join("downloaded");
    let lora = local_copy(&env, out.epochs[1].lora.as_ref().unwrap(), &files).await;
    let file = TensorFile::open(&lora).unwrap();
    let names = file.names();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("lora_unet_") && n.ends_with(".alpha"))
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("lora_te_text_model_encoder_layers_"))
    );
    let meta = file.metadata();
    assert_eq!(meta["ss_network_dim"], "4");
    assert_eq!(meta["ss_epoch"], "2");
    assert_eq!(meta["ss_num_train_images"], "60");
    let tags: serde_json::Value = serde_json::from_str(&meta["ss_tag_frequency"]).unwrap();
    let held: Vec<&str> = out.outputs["validation_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    if !held.contains(&"red_circle_white1.png") {
        assert_eq!(tags["dataset"]["a circle relabelled by hand"], 1);
    }
    assert_eq!(tags["dataset"]["sks"], 60);
    let dirs: serde_json::Value = serde_json::from_str(&meta["ss_dataset_dirs"]).unwrap();
    assert_eq!(dirs["dataset"]["img_count"], 60);
    let curve = local_copy(
        &env,
        out.artifacts
            .iter()
            .find(|a| a.name == "loss_curve.png")
            .unwrap(),
        &files,
    )
    .await;
    let img = image::open(&curve).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (loss_plot::WIDTH, loss_plot::HEIGHT)
    );

    // The TensorBoard file reads back: every step's loss and learning rate, the validation
    // loss of the base model and of both epochs.
    let events = out
        .artifacts
        .iter()
        .find(|a| a.name.contains("tfevents"))
        .expect("a TensorBoard event file");
    let bytes = env.store.get_verified(events).await.unwrap();
    let scalars = tensorboard::scalars(&tensorboard::read_events(&bytes).unwrap());
    let series = |tag: &str| -> Vec<(i64, f32)> {
        scalars
            .iter()
            .filter(|(t, _, _)| t == tag)
            .map(|(_, s, v)| (*s, *v))
            .collect()
    };
    let steps = out.outputs["steps"].as_u64().unwrap() as usize;
    assert_eq!(series("loss/current").len(), steps);
    assert_eq!(series("lr/unet").len(), steps);
    assert_eq!(series("loss/average").len(), steps);
    let validation = series("loss/validation");
    assert_eq!(
        validation
            .iter()
            .map(|(s, _)| *s as u64)
            .collect::<Vec<_>>(),
        vec![0, saved_at[0], saved_at[1]]
    );
    assert_eq!(
        validation[2].1 as f64,
        out.epochs[1].validation_loss.unwrap() as f32 as f64
    );

    // Sampling every epoch's LoRA.
    let mut sample = assignment("sample", &env, tiny_sd_params());
    sample.epochs = out.epochs.clone();
    let mut sample_options = options.clone();
    sample_options.sample.steps = 10;
    let sampler = NativeSampler::new(sample_options).unwrap();
    let (ctx, handle) = context(&env, &sample, "work-sample");
    let progress = collect(handle);
    let out = sampler.run(&sample, &ctx).await.unwrap();
    drop(ctx);
    assert_eq!(progress.await.unwrap().last().unwrap().percent, 100.0);
    let by_epoch: Vec<(u32, usize)> = out
        .epochs
        .iter()
        .map(|e: &EpochOutput| (e.epoch, e.samples.len()))
        .collect();
    assert_eq!(by_epoch, vec![(1, 2), (2, 2)]);
    // The base model's samples, outside any epoch, and the contact sheet: the base row and
    // one row per epoch, one column per prompt, 64-pixel samples in 192-pixel cells.
    let base: Vec<_> = out
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Sample)
        .collect();
    assert_eq!(base.len(), 2);
    assert!(base.iter().all(|a| a.epoch.is_none()));
    let sheet = out
        .artifacts
        .iter()
        .find(|a| a.name == "contact_sheet.png")
        .expect("a contact sheet");
    assert_eq!(sheet.kind, ArtifactKind::Report);
    assert_eq!(
        out.outputs["contact_sheet"].as_str(),
        Some(sheet.uri.as_str())
    );
    let sheet_png = local_copy(&env, sheet, &files).await;
    let sheet_img = image::open(&sheet_png).unwrap();
    assert_eq!(
        (sheet_img.width(), sheet_img.height()),
        contact_sheet::dimensions(3, 2, 192)
    );
    let events = out
        .artifacts
        .iter()
        .find(|a| a.name.contains("tfevents"))
        .expect("the contact sheet in a TensorBoard file");
    let bytes = env.store.get_verified(events).await.unwrap();
    let images: Vec<_> = tensorboard::read_events(&bytes)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.what {
            Some(tensorboard::What::Summary(s)) => Some(s.value),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match v.kind {
            Some(tensorboard::ValueKind::Image(i)) => Some((v.tag, i)),
            _ => None,
        })
        .collect();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].0, "samples/contact_sheet");
    assert_eq!(
        (images[0].1.width as u32, images[0].1.height as u32),
        (sheet_img.width(), sheet_img.height())
    );
    assert!(
        out.epochs
            .iter()
            .all(|e| e.lora.is_none() && e.loss.is_none())
    );
    let first = &out.epochs[0].samples[0];
    assert_eq!(first.kind, ArtifactKind::Sample);
    let png = local_copy(&env, first, &files).await;
    let decoded = image::open(&png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 64));
    let text = read_png_text(&png).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("prompt"), Some("sks, a red circle"));
    assert_eq!(get("seed"), Some("42"));
    assert!(
        get("parameters")
            .unwrap()
            .contains("<lora:demo_shapes-000001:1>")
    );

    // The job's sample settings reach the sampler: size, steps, seed, sampler, strength,
    // negative prompt; and a job without prompts gets them from its trigger word.
    let mut params = tiny_sd_params();
    for (k, v) in [
        ("sample_width", ParamValue::Int(32)),
        ("sample_height", ParamValue::Int(48)),
        ("sample_steps", ParamValue::Int(3)),
        ("sample_seed", ParamValue::Int(7)),
        ("sample_sampler", ParamValue::Str("euler".into())),
        ("sample_lora_strength", ParamValue::Float(0.5)),
        ("sample_negative_prompt", ParamValue::Str("blurry".into())),
    ] {
        params.insert(k.into(), v);
    }
    let mut custom = assignment("sample", &env, params);
    custom.epochs = sample.epochs.clone();
    custom.sample_prompts.clear();
    let (ctx, _handle) = context(&env, &custom, "work-sample-settings");
    let out = NativeSampler::new(options.clone())
        .unwrap()
        .run(&custom, &ctx)
        .await
        .unwrap();
    assert_eq!(out.outputs["default_prompts"], true);
    assert_eq!(out.outputs["prompts"], serde_json::json!(["sks"]));
    let first = &out.epochs[0].samples[0];
    let png = local_copy(&env, first, &files).await;
    let decoded = image::open(&png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (32, 48));
    let text = read_png_text(&png).unwrap();
    let parameters = text
        .iter()
        .find(|(key, _)| key == "parameters")
        .map(|(_, v)| v.clone())
        .unwrap();
    for part in [
        "sks <lora:demo_shapes-000001:0.5>",
        "Negative prompt: blurry",
        "Steps: 3",
        "Sampler: Euler",
        "Seed: 7",
        "Size: 32x48",
    ] {
        assert!(parameters.contains(part), "{part} in {parameters}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_training_and_bad_parameters_are_named() {
    let env = env().await;
    let trainer = NativeTrainer::new(NativeOptions::new(assets())).unwrap();

    // Cancelled once training is under way.
    let mut params = tiny_sd_params();
    params.insert("epochs".into(), ParamValue::Int(100));
    let step = assignment("train", &env, params);
    let (ctx, mut handle) = context(&env, &step, "work-cancel");
    let watcher = tokio::spawn(async move {
        while handle.changed().await {
            if handle.latest().and_then(|p| p.step).is_some_and(|s| s >= 1) {
                handle.cancel();
                break;
            }
        }
    });
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    watcher.await.unwrap();
    assert_eq!(err.kind, StepErrorKind::Cancelled, "{err:?}");

    // A schedule the native engine lacks, named.
    let mut params = tiny_sd_params();
    params.insert(
        "lr_scheduler".into(),
        ParamValue::Str("cosine_with_restarts".into()),
    );
    let step = assignment("train", &env, params);
    let (ctx, _h) = context(&env, &step, "work-bad");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(!err.retryable);
    assert!(err.message.contains("`lr_scheduler`"), "{}", err.message);

    // A resolution the model cannot take, named by its parameter.
    let mut params = tiny_sd_params();
    params.insert("resolution".into(), ParamValue::Int(60));
    let step = assignment("train", &env, params);
    let (ctx, _h) = context(&env, &step, "work-res");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::InvalidInput);
    assert!(err.message.contains("`resolution`"), "{}", err.message);

    // A base model this worker does not have.
    let mut step = assignment("train", &env, tiny_sd_params());
    step.base_model = "sdxl".into();
    let (ctx, _h) = context(&env, &step, "work-model");
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert!(err.message.contains("\"sdxl\""), "{}", err.message);

    // An unknown device is refused when the executor is built.
    let err = NativeTrainer::new(NativeOptions::new(assets()).with_device("tpu")).unwrap_err();
    assert!(err.to_string().contains("tpu"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_resumes_from_the_work_folder() {
    let env = env().await;
    let mut options = NativeOptions::new(assets());
    options.work_dir = Some(env.tmp.path().join("native-work"));
    let trainer = NativeTrainer::new(options).unwrap();
    let mut params = tiny_sd_params();
    params.insert("epochs".into(), ParamValue::Int(3));
    params.insert("text_encoder_lr".into(), ParamValue::Float(0.0));

    // Attempt 1 is lost after step 45 or a little later (the 80 pictures make 40 steps of 2 per
    // epoch: epoch 1 was saved at step 40, epoch 2 at step 80; cancellation reaches the trainer
    // within a poll interval).
    let step = assignment("train", &env, params.clone());
    let (ctx, mut handle) = context(&env, &step, "attempt-1");
    let watcher = tokio::spawn(async move {
        while handle.changed().await {
            if handle
                .latest()
                .and_then(|p| p.step)
                .is_some_and(|s| s >= 45)
            {
                handle.cancel();
                break;
            }
        }
    });
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    watcher.await.unwrap();
    assert_eq!(err.kind, StepErrorKind::Cancelled);

    // Attempt 2 continues from the last epoch state and still reports every epoch.
    let mut step = assignment("train", &env, params);
    step.attempt = 2;
    let (ctx, _h) = context(&env, &step, "attempt-2");
    let out = trainer.run(&step, &ctx).await.unwrap();
    let resumed = out.outputs["resumed_from_step"].as_u64().unwrap();
    assert!(resumed == 40 || resumed == 80, "{resumed}");
    assert_eq!(out.outputs["steps"], 120);
    assert_eq!(
        out.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        out.epochs
            .iter()
            .all(|e| e.lora.is_some() && e.loss.is_some())
    );
}
