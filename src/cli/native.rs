//! The native engine's executors (`train` and `sample` on loraflow's own
//! trainer), as `serve --with-executors`, `worker` and `demo` set them up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use loraflow::EngineBuilder;
use loraflow::executors::native::NativeOptions;
use loraflow::executors::worker::Worker;
use loraflow::executors::{NativeSampler, NativeTrainer};

/// Where base models are looked up when no `--models` is given: the first
/// `assets/` folder holding the demo model from the current folder upwards
/// (a checkout), else the checkout this binary was built from.
pub fn default_models_root() -> PathBuf {
    let found = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|d| d.join("assets"))
            .find(|a| a.join("tiny-sd").join("model_index.json").is_file())
    });
    found.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The native engine's settings: base models under `models` (default
/// [`default_models_root`]) on `device`, with a work folder that outlives
/// attempts so a retried training resumes from its last saved state.
pub fn options(
    models: Option<&Path>,
    device: &str,
    work_dir: Option<PathBuf>,
) -> anyhow::Result<NativeOptions> {
    if let Some(hint) = missing_gpu_feature(device) {
        anyhow::bail!(hint);
    }
    let root = models.map_or_else(default_models_root, Path::to_path_buf);
    let mut options = NativeOptions::new(root).with_device(device);
    options.work_dir = work_dir;
    options
        .validate()
        .with_context(|| format!("the native engine cannot use device {device:?}"))?;
    Ok(options)
}

/// The in-process engine with the native `train` and `sample` executors.
pub fn with_native(
    builder: EngineBuilder,
    options: &NativeOptions,
) -> anyhow::Result<EngineBuilder> {
    Ok(builder
        .executor(NativeTrainer::new(options.clone())?)
        .executor(NativeSampler::new(options.clone())?))
}

/// A worker with the native executors of the requested kinds (`train`,
/// `sample`).
pub fn native_worker(
    mut worker: Worker,
    options: &NativeOptions,
    kinds: &[String],
) -> anyhow::Result<Worker> {
    if kinds.iter().any(|k| k == "train") {
        worker = worker.with(Arc::new(NativeTrainer::new(options.clone())?));
    }
    if kinds.iter().any(|k| k == "sample") {
        worker = worker.with(Arc::new(NativeSampler::new(options.clone())?));
    }
    Ok(worker)
}

/// The GPU backends this build has, by the `loraflow` crate's features.
const GPU_FEATURES: [(&str, bool); 3] = [
    ("wgpu", cfg!(feature = "wgpu")),
    ("vulkan", cfg!(feature = "vulkan")),
    ("cuda", cfg!(feature = "cuda")),
];

/// Why `device` cannot be used by this build, with the command that builds
/// one that can; `None` when the build has its backend (or `device` is not a
/// GPU backend: the trainer reports other mistakes itself).
pub fn missing_gpu_feature(device: &str) -> Option<String> {
    let backend = device.trim().split(':').next().unwrap_or_default();
    let (feature, _) = GPU_FEATURES
        .iter()
        .find(|(name, built)| *name == backend && !built)?;
    let mut hint = format!(
        "device {device:?} needs the `{feature}` feature, which this build of loraflow does not have; \
         build one with `cargo build --release -p loraflow --features {feature}` \
         (then run target/release/loraflow worker --device {device} ...)"
    );
    if *feature == "cuda" {
        hint.push_str(
            ". burn's CUDA build script downloads an LLVM bundle, so build it on a machine that \
             can reach the internet; `--features vulkan` (or `wgpu`) builds anywhere",
        );
    }
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::missing_gpu_feature;

    #[test]
    fn a_gpu_device_without_its_feature_names_the_build_command() {
        assert_eq!(missing_gpu_feature("cpu"), None);
        for (device, feature, built) in [
            ("vulkan", "vulkan", cfg!(feature = "vulkan")),
            ("wgpu:1", "wgpu", cfg!(feature = "wgpu")),
            ("cuda:0", "cuda", cfg!(feature = "cuda")),
        ] {
            match missing_gpu_feature(device) {
                None => assert!(built, "{device}"),
                Some(hint) => {
                    assert!(!built);
                    assert!(
                        hint.contains(&format!(
                            "cargo build --release -p loraflow --features {feature}"
                        )),
                        "{hint}"
                    );
                }
            }
        }
        assert!(missing_gpu_feature("cuda:0").is_none_or(|h| h.contains("LLVM")));
    }
}
