//! FLUX.1 on the kohya engine: the catalogue offers `flux-dev` with `kohya`,
//! and a job resolved by the catalogue runs in the kohya executor
//! (`flux_train_network.py` with `networks.lora_flux`; here the sd-scripts
//! stand-in of tests/fixtures/kohya in its place).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use loraflow_core::catalogue::{Catalogue, Engine, ModelFamily, ParamValue, Params};
use loraflow_core::executor::{Executor, StepAssignment, StepContext};
use loraflow_core::ids::{JobId, LeaseId, StepId};
use loraflow_core::job::{DatasetRef, Naming, StepErrorKind};
use loraflow_executors::kohya::{KohyaModel, KohyaOptions};
use loraflow_executors::{ArtifactStore, KohyaTrainer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kohya")
}

fn table(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

async fn setup(
    tmp: &tempfile::TempDir,
    with_files: bool,
) -> (ArtifactStore, StepAssignment, KohyaOptions) {
    let upload = tmp.path().join("upload");
    std::fs::create_dir_all(&upload).unwrap();
    std::fs::write(upload.join("a.png"), b"png a").unwrap();
    std::fs::write(upload.join("a.txt"), b"corgi").unwrap();
    let store = ArtifactStore::open(tmp.path().join("artifacts").to_str().unwrap()).unwrap();
    let (uri, _) = store.upload_dir(&upload, "datasets/corgi").await.unwrap();
    let checkpoint = tmp.path().join("flux1-dev.safetensors");
    std::fs::write(&checkpoint, b"flux weights").unwrap();

    // The job's parameters as the catalogue resolves them for flux-dev on kohya.
    let catalogue = Catalogue::builtin()
        .with_engine_rules(loraflow_executors::engine_rules())
        .unwrap();
    let model = catalogue.base_model(&"flux-dev".into()).unwrap();
    assert!(model.supports(Engine::Kohya));
    let given: Params = [
        ("epochs", ParamValue::Int(3)),
        ("num_repeats", ParamValue::Int(10)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let params = catalogue
        .schema
        .resolve(model, Engine::Kohya, None, &given)
        .unwrap();
    for absent in [
        "prediction_type",
        "min_snr_gamma",
        "clip_skip",
        "text_encoder_lr",
    ] {
        assert!(!params.contains_key(absent), "{absent} is offered for flux");
    }
    let step = StepAssignment {
        job_id: JobId::new("job-1"),
        step_id: StepId::new("train"),
        kind: "train".into(),
        attempt: 1,
        lease_id: LeaseId::new("lease-1"),
        params,
        step_params: serde_json::Value::Null,
        base_model: "flux-dev".into(),
        engine: Engine::Kohya,
        model_family: Some(ModelFamily::Flux),
        base_model_uri: None,
        dataset: DatasetRef { uri, sha256: None },
        sample_prompts: vec![],
        naming: Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        },
        inputs: vec![],
        epochs: vec![],
        approved_epoch: None,
        approved_step: None,
    };
    let mut options = KohyaOptions::new(fixtures());
    options.launcher = vec!["sh".into()];
    options.scripts.flux = "sd_scripts_standin.sh".into();
    options.stop_grace = Duration::from_secs(2);
    options.models.insert(
        "flux-dev".into(),
        KohyaModel {
            checkpoint,
            family: Some(ModelFamily::Flux),
            extra_config: if with_files {
                table(
                    r#"
                    ae = "/models/ae.safetensors"
                    clip_l = "/models/clip_l.safetensors"
                    t5xxl = "/models/t5xxl_fp16.safetensors"
                    "#,
                )
            } else {
                table(r#"ae = "/models/ae.safetensors""#)
            },
        },
    );
    (store, step, options)
}

#[tokio::test]
async fn a_flux_dev_job_the_catalogue_accepts_runs_on_the_kohya_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, step, options) = setup(&tmp, true).await;
    let trainer = KohyaTrainer::new(options).unwrap();
    let io = Arc::new(store.for_step(&step.job_id, &step.step_id, step.attempt));
    let (ctx, _handle) = StepContext::new(io, tmp.path().join("work"), tracing::Span::none());
    let out = trainer.run(&step, &ctx).await.unwrap();
    assert_eq!(out.outputs["network_module"], "networks.lora_flux");
    assert_eq!(out.epochs.len(), 3);
    let training: toml::Table = toml::from_str(
        &std::fs::read_to_string(tmp.path().join("work/training_config.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        training["t5xxl"].as_str(),
        Some("/models/t5xxl_fp16.safetensors")
    );
    assert_eq!(training["network_train_unet_only"].as_bool(), Some(true));
}

#[tokio::test]
async fn a_flux_model_without_its_text_encoders_is_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, step, options) = setup(&tmp, false).await;
    let trainer = KohyaTrainer::new(options).unwrap();
    let io = Arc::new(store.for_step(&step.job_id, &step.step_id, step.attempt));
    let (ctx, _handle) = StepContext::new(io, tmp.path().join("work"), tracing::Span::none());
    let err = trainer.run(&step, &ctx).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Unavailable);
    assert!(
        err.message.contains("give no clip_l, t5xxl"),
        "{}",
        err.message
    );
}
