//! A job on the native engine from creation through review to publication: the embedded
//! engine with the real native trainer and sampler on a tiny model of the trainer crate's
//! fixtures, for the per-family end-to-end tests (`engine_sdxl`, `engine_flux`).

use loraflow::core::catalogue::{Catalogue, Engine as EngineKind, ParamValue};
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::{DatasetRef, JobSpec, JobState, Naming};
use loraflow::executors::native::NativeOptions;
use loraflow::executors::{Label, NativeSampler, NativeTrainer, Publish, ValidateDataset};
use loraflow::{Engine, NewJob};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::dataset;

/// The built-in catalogue plus a tiny test model `id` of `family`, native only, trained and
/// sampled at 32 px (up to 64) for 2 epochs; `extra` adds catalogue TOML of its own.
pub fn tiny_catalogue(id: &str, label: &str, family: &str, extra: &str) -> Catalogue {
    let builtin = include_str!("../../crates/core/src/catalogue/default.toml");
    let mut tiny = format!(
        "[[base_models]]\nid = \"{id}\"\nlabel = \"{label}\"\nfamily = \"{family}\"\n\
         engines = [\"native\"]\nmin_vram_gb = 0\npixel_multiple = 4\n\n\
         [params.epochs.models.{id}]\ndefault = 2\n"
    );
    for param in ["resolution", "sample_width", "sample_height"] {
        tiny += &format!("\n[params.{param}.models.{id}]\ndefault = 32\nmin = 32\nmax = 64\n");
    }
    Catalogue::from_toml_str(&format!("{builtin}\n{tiny}\n{extra}")).unwrap()
}

/// A folder of the trainer crate's fixtures.
pub fn trainer_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/trainer/fixtures")
        .join(rel)
}

pub fn copy_dir(from: &Path, to: &Path) {
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

/// A published native job: the engine (still running), the job and its published LoRA file.
pub struct Published {
    pub engine: Engine,
    pub job: JobId,
    pub file: PathBuf,
    /// The file's safetensors metadata.
    pub meta: HashMap<String, String>,
    /// The file's tensor names.
    pub names: Vec<String>,
}

impl Published {
    /// The job's hash chain verified, then the engine shut down.
    pub async fn finish(self) {
        self.engine.store().verify_job(&self.job).await.unwrap();
        self.engine.shutdown().await;
    }
}

/// Runs a job of tenant `acme` for `base_model` on `native` with `params`: three pictures of
/// a corgi, one sample prompt; approves the last epoch at review and waits for the end.
/// Asserts it was published with two epochs, each with a LoRA and one sample.
pub async fn publish_native_job(
    tmp: &Path,
    catalogue: Catalogue,
    native: NativeOptions,
    base_model: &str,
    params: &[(&str, ParamValue)],
) -> Published {
    let engine = Engine::builder()
        .catalogue(catalogue)
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
        base_model: base_model.into(),
        engine: EngineKind::Native,
        profile: None,
        params: params
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
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
    let new = NewJob {
        spec,
        request_id: None,
    };
    let job = engine.create_job(&tenant, new).await.unwrap().status.job_id;

    super::approve_last_epoch_until_ended(&engine, &tenant, &job, "native test").await;

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
    let file = tmp.join(format!("published/corgi/v1/{job}/corgi-v1.safetensors"));
    let bytes = std::fs::read(&file).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    Published {
        engine,
        job,
        file,
        meta,
        names,
    }
}
