//! loraflow-executors: the executors loraflow ships, and the artifact store
//! they read and write through.
//!
//! - [`artifacts`]: the artifact store on `object_store` (local filesystem,
//!   or S3-compatible with the `s3` feature, on by default), digests
//!   verified on read.
//! - [`s3`]: how S3 locations are reached, and their errors explained.
//! - [`presign`]: presigned GET and PUT URLs of the store's objects.
//! - [`validate`]: `validate_dataset`: decode every image, enforce limits,
//!   find duplicates, write a manifest.
//! - [`label`]: `label`: captions and tags from sidecars, a labeller program,
//!   or a trigger-word template.
//! - [`publish`]: `publish`: copy the approved LoRA to permanent storage.
//! - [`kohya`]: `train` on the kohya engine: sd-scripts as a subprocess.
//! - [`aitoolkit`]: `train` on the ai-toolkit engine: ostris/ai-toolkit as a
//!   subprocess.
//! - [`external`]: what the subprocess engines share (the child process,
//!   output lines, the image folder, parameter checks).
//! - [`native`]: `train` and `sample` on the native engine: loraflow's own
//!   trainer, in-process.
//! - [`dataset`]: what is in a dataset folder.
//! - [`dataset_upload`]: uploads into a tenant's content-addressed namespace,
//!   staged and then moved into place.
//! - [`install`]: what each engine has installed, checked when a worker starts.
//! - [`model_check`]: what a model folder or checkpoint is, what it lacks, and
//!   whether the native engine can train it (`loraflow models check`).
//! - [`tensorboard`]: TensorBoard event files (scalars and images) beside a run's outputs.
//! - [`worker`]: the worker runtime that runs executors behind the executor protocol.

pub mod aitoolkit;
pub mod artifact_stream;
pub mod artifacts;
pub mod dataset;
pub mod dataset_upload;
pub mod external;
pub mod install;
pub mod kohya;
pub mod label;
pub mod model_check;
pub mod native;
pub mod presign;
pub mod publish;
pub mod s3;
pub mod tensorboard;
mod util;
pub mod validate;
pub mod worker;

pub use aitoolkit::{AiToolkitOptions, AiToolkitTrainer};
pub use artifacts::{ArtifactStore, StepArtifacts};
pub use dataset_upload::{DatasetUpload, LocalDataset};
pub use install::{EngineRefused, Installation};
pub use kohya::{KohyaOptions, KohyaTrainer};
pub use label::{Label, LabellerCommand, Labels};
pub use native::{NativeOptions, NativeSampler, NativeTrainer};
pub use publish::Publish;
pub use s3::S3Options;
pub use validate::{Manifest, ValidateDataset, ValidateOptions};

/// What each built-in training engine runs, from the tables its parameter
/// mapping reads: for [`Catalogue::with_engine_rules`](loraflow_core::catalogue::Catalogue::with_engine_rules),
/// which the engine builder applies, so the schema offers exactly these.
pub fn engine_rules() -> Vec<loraflow_core::catalogue::EngineRules> {
    vec![
        native::params::rules(),
        kohya::params::rules(),
        aitoolkit::params::rules(),
    ]
}
