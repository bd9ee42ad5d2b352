//! A FLUX.1 job on the native engine, end to end: the embedded engine with the real native
//! trainer and sampler on a tiny FLUX.1-dev-shaped diffusers folder (the trainer crate's
//! fixture, installed as the worker's model), from creation through review to publication;
//! the published LoRA is a kohya Flux file that the trainer's Flux loader reads back. The same
//! job runs on the fixture's transformer as a BFL single file registered with the folder of
//! its other parts (`[models.<id>] path`, `config_dir`).

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dataset;
use futures::StreamExt;
use loraflow::core::catalogue::{Catalogue, Engine as EngineKind, ParamValue};
use loraflow::core::ids::TenantId;
use loraflow::core::job::{DatasetRef, JobEvent, JobSpec, JobState, Naming};
use loraflow::executors::native::{NativeModel, NativeOptions};
use loraflow::executors::{Label, NativeSampler, NativeTrainer, Publish, ValidateDataset};
use loraflow::{Engine, NewJob};
use loraflow_trainer::flux::FluxTransformerConfig;
use loraflow_trainer::flux::lora::load_flux_kohya;

/// The built-in catalogue plus `tiny-flux`: family flux, native only, at the sizes its VAE of
/// two levels and 2×2 packing take.
fn catalogue() -> Catalogue {
    let builtin = include_str!("../crates/core/src/catalogue/default.toml");
    let tiny = r#"
[[base_models]]
id = "tiny-flux"
label = "Tiny FLUX.1 (a FLUX.1-dev-shaped test model)"
family = "flux"
engines = ["native"]
min_vram_gb = 0
pixel_multiple = 4

[params.resolution.models.tiny-flux]
default = 32
min = 32
max = 64

[params.epochs.models.tiny-flux]
default = 2

[params.sample_width.models.tiny-flux]
default = 32
min = 32
max = 64

[params.sample_height.models.tiny-flux]
default = 32
min = 32
max = 64

[params.sample_steps.models.tiny-flux]
default = 4
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

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/trainer/fixtures/flux")
        .join(rel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_flux_job_runs_to_publication_with_a_kohya_flux_file() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    copy_dir(&fixture("pipeline"), &models.join("tiny-flux"));
    let native = NativeOptions::new(&models).with_device("cpu");
    assert_eq!(native.installed_models(), ["tiny-flux"]);
    publish_a_flux_job(tmp.path(), native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_flux_job_trains_a_bfl_transformer_file_with_its_parts_folder() {
    // As ComfyUI users keep FLUX.1: `flux1-dev.safetensors` under BFL's names, registered with
    // a diffusers FLUX.1 folder for its text encoders, VAE, configs and tokenizers.
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(
        fixture("single_file/flux1-tiny-dev.safetensors"),
        models.join("flux1-tiny-dev.safetensors"),
    )
    .unwrap();
    let parts = tmp.path().join("flux-parts");
    copy_dir(&fixture("pipeline"), &parts);
    let mut native = NativeOptions::new(&models).with_device("cpu");
    native.models.insert(
        "tiny-flux".into(),
        NativeModel {
            path: "flux1-tiny-dev.safetensors".into(),
            config_dir: Some(parts),
        },
    );
    assert_eq!(native.installed_models(), ["tiny-flux"]);
    publish_a_flux_job(tmp.path(), native).await;
}

/// Runs a `tiny-flux` job on `native` through review to publication and checks the published
/// kohya Flux file.
async fn publish_a_flux_job(tmp: &Path, native: NativeOptions) {
    let engine = Engine::builder()
        .catalogue(catalogue())
        .store(format!("sqlite://{}", tmp.join("loraflow.db").display()))
        .artifacts(tmp.join("artifacts").display().to_string())
        .workdir(tmp.join("work"))
        .executor(ValidateDataset::default())
        .executor(Label::default())
        .executor(NativeTrainer::new(native.clone()).unwrap())
        .executor(NativeSampler::new(native).unwrap())
        .executor(Publish {
            destination: format!("file://{}", tmp.join("published").display()),
        })
        .build()
        .await
        .unwrap();
    dataset(&tmp.join("upload"), 3);
    let (dataset_uri, _) = engine
        .artifacts()
        .upload_dir(&tmp.join("upload"), "datasets/acme/corgi")
        .await
        .unwrap();

    let tenant = TenantId::new("acme");
    let spec = JobSpec {
        tenant: tenant.clone(),
        base_model: "tiny-flux".into(),
        engine: EngineKind::Native,
        profile: None,
        // sd-scripts' other recommended FLUX.1 setting (a fixed shift), and bf16 base weights.
        params: [
            (
                "timestep_sampling".to_owned(),
                ParamValue::Str("shift".into()),
            ),
            ("discrete_flow_shift".to_owned(), ParamValue::Float(3.1582)),
            ("base_weights".to_owned(), ParamValue::Str("bf16".into())),
            ("learning_rate".to_owned(), ParamValue::Float(1e-3)),
            ("unet_lr".to_owned(), ParamValue::Float(1e-3)),
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
                        .approve(&tenant, &job, last as u32, "flux test", None)
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
    let published = tmp.join(format!("published/corgi/v1/{job}/corgi-v1.safetensors"));
    let bytes = std::fs::read(&published).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    assert_eq!(meta["ss_base_model_version"], "flux1");
    assert_eq!(meta["modelspec.architecture"], "flux-1-dev/lora");
    assert_eq!(meta["ss_timestep_sampling"], "shift");
    assert_eq!(meta["ss_discrete_flow_shift"], "3.1582");
    let config: serde_json::Value = serde_json::from_str(&meta["loraflow_train_config"]).unwrap();
    assert_eq!(config["model"]["base_weights"], "bf16", "{config}");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    for key in [
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
        "lora_unet_double_blocks_0_txt_mlp_0.lora_up.weight",
        "lora_unet_single_blocks_0_linear1.alpha",
    ] {
        assert!(names.contains(&key), "no {key} in the published file");
    }
    assert!(
        names.iter().all(|n| n.starts_with("lora_unet_")),
        "{names:?}"
    );

    let device = loraflow_trainer::device::parse_device("cpu").unwrap();
    let dir = fixture("pipeline/transformer");
    let mut transformer = FluxTransformerConfig::from_file(dir.join("config.json"))
        .unwrap()
        .init(&device)
        .load_diffusers(dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let loaded = load_flux_kohya(&mut transformer, &published, 1.0, &device).unwrap();
    assert_eq!(loaded.modules.len(), 17, "{:?}", loaded.modules);
    engine.store().verify_job(&job).await.unwrap();
    engine.shutdown().await;
}
