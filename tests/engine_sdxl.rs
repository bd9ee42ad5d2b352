//! An SDXL job on the native engine, end to end: the embedded engine with the real native
//! trainer and sampler on a tiny SDXL-shaped diffusers model (the trainer crate's fixture,
//! installed as the worker's model folder), from creation through review to publication; the
//! published LoRA is a kohya SDXL file.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::dataset;
use futures::StreamExt;
use loraflow::core::catalogue::{Catalogue, Engine as EngineKind, ParamValue};
use loraflow::core::ids::TenantId;
use loraflow::core::job::{DatasetRef, JobEvent, JobSpec, JobState, Naming};
use loraflow::executors::native::NativeOptions;
use loraflow::executors::{Label, NativeSampler, NativeTrainer, Publish, ValidateDataset};
use loraflow::{Engine, NewJob};

/// The built-in catalogue plus `tiny-sdxl`: family SDXL, native only, at the sizes its two-level
/// UNet and two-level VAE take.
fn catalogue() -> Catalogue {
    let builtin = include_str!("../crates/core/src/catalogue/default.toml");
    let tiny = r#"
[[base_models]]
id = "tiny-sdxl"
label = "Tiny SDXL (an SDXL-shaped test model)"
family = "sdxl"
engines = ["native"]
min_vram_gb = 0
pixel_multiple = 4

[params.resolution.models.tiny-sdxl]
default = 32
min = 32
max = 64

[params.epochs.models.tiny-sdxl]
default = 2

[params.sample_width.models.tiny-sdxl]
default = 32
min = 32
max = 64

[params.sample_height.models.tiny-sdxl]
default = 32
min = 32
max = 64
"#;
    Catalogue::from_toml_str(&format!("{builtin}\n{tiny}")).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sdxl_job_runs_to_publication_with_a_kohya_sdxl_file() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/trainer/fixtures/sdxl/pipeline"),
        &models.join("tiny-sdxl"),
    );
    let native = NativeOptions::new(&models).with_device("cpu");
    assert_eq!(native.installed_models(), ["tiny-sdxl"]);
    let engine = Engine::builder()
        .catalogue(catalogue())
        .store(format!(
            "sqlite://{}",
            tmp.path().join("loraflow.db").display()
        ))
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .workdir(tmp.path().join("work"))
        .executor(ValidateDataset::default())
        .executor(Label::default())
        .executor(NativeTrainer::new(native.clone()).unwrap())
        .executor(NativeSampler::new(native).unwrap())
        .executor(Publish {
            destination: format!("file://{}", tmp.path().join("published").display()),
        })
        .build()
        .await
        .unwrap();
    dataset(&tmp.path().join("upload"), 3);
    let (dataset_uri, _) = engine
        .artifacts()
        .upload_dir(&tmp.path().join("upload"), "datasets/acme/corgi")
        .await
        .unwrap();

    let tenant = TenantId::new("acme");
    let spec = JobSpec {
        tenant: tenant.clone(),
        base_model: "tiny-sdxl".into(),
        engine: EngineKind::Native,
        profile: None,
        // bf16 base weights and checkpointing: the memory savers SDXL users reach for, end to
        // end.
        params: [
            ("text_encoder_lr".to_owned(), ParamValue::Float(1e-4)),
            ("base_weights".to_owned(), ParamValue::Str("bf16".into())),
            ("gradient_checkpointing".to_owned(), ParamValue::Bool(true)),
        ]
        .into(),
        dataset: DatasetRef {
            uri: dataset_uri,
            sha256: None,
        },
        sample_prompts: vec!["a corgi".into()],
        priority: 0,
        naming: Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        },
        labels: Default::default(),
        workflow: None,
        webhooks: Vec::new(),
    };
    let job = engine
        .create_job(
            &tenant,
            NewJob {
                spec,
                request_id: None,
            },
        )
        .await
        .unwrap()
        .status
        .job_id;

    let mut feed = std::pin::pin!(engine.watch(&tenant, &job, 0).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(event) = feed.next().await {
            let event = event.unwrap();
            match &event.payload {
                JobEvent::ReviewRequested(review) => {
                    let last = review.epochs.iter().filter_map(|e| e.lora.as_ref()).count();
                    engine
                        .approve(&tenant, &job, last as u32, "sdxl test", None)
                        .await
                        .unwrap();
                }
                JobEvent::JobPublished(_) | JobEvent::JobFailed(_) | JobEvent::JobCancelled(_) => {
                    engine.store().wait_for(event.position).await.unwrap();
                    return;
                }
                _ => {}
            }
        }
        panic!("the engine stopped before the job ended");
    })
    .await;
    assert!(ended.is_ok(), "the job did not end within 10 minutes");

    let status = engine.get_job(&tenant, &job).await.unwrap().status;
    assert_eq!(status.state, JobState::Published, "{:?}", status.failure);
    assert_eq!(status.epochs.len(), 2);
    assert!(
        status
            .epochs
            .values()
            .all(|e| e.lora.is_some() && e.samples.len() == 1),
        "{:?}",
        status.epochs
    );
    let published = tmp
        .path()
        .join(format!("published/corgi/v1/{job}/corgi-v1.safetensors"));
    let bytes = std::fs::read(&published).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    assert_eq!(meta["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );
    let config: serde_json::Value = serde_json::from_str(&meta["loraflow_train_config"]).unwrap();
    assert_eq!(config["model"]["base_weights"], "bf16", "{config}");
    assert_eq!(config["gradient_checkpointing"], true, "{config}");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    for prefix in [
        "lora_unet_input_blocks_",
        "lora_unet_output_blocks_",
        "lora_te1_",
        "lora_te2_",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* key in the published file"
        );
    }
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("lora_unet_down_blocks"))
    );
    engine.store().verify_job(&job).await.unwrap();
    engine.shutdown().await;
}
