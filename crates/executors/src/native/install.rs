//! Which base models the native engine has on this machine: the folders
//! under `models_root` that hold a diffusers model (`model_index.json`), and
//! the models configured by path.

use std::path::Path;

use loraflow_core::catalogue::Engine;

use super::options::NativeOptions;
use crate::install::{EngineRefused, Installation, native_install_hint};

impl NativeOptions {
    /// The base model ids installed here (without checking the setup).
    pub fn installed_models(&self) -> Vec<String> {
        self.check_install().map(|i| i.models).unwrap_or_default()
    }

    /// Check the setup when a worker starts: `models_root` must be a folder
    /// and at least one model must be there. A configured model whose path
    /// is missing is skipped, with the reason.
    pub fn check_install(&self) -> Result<Installation, EngineRefused> {
        let root = &self.models_root;
        let refuse = |reason: &str| EngineRefused {
            engine: Engine::Native,
            path: root.clone(),
            reason: reason.to_owned(),
            fix: format!(
                "give --models a folder holding one folder per base model \
                 (`{}/tiny-sd/model_index.json`, ...); {}",
                root.display(),
                native_install_hint("<id>", &root.join("<id>"))
            ),
        };
        if !root.is_dir() {
            return Err(refuse("the models folder does not exist"));
        }
        let mut models = Vec::new();
        let mut skipped = Vec::new();
        let entries = std::fs::read_dir(root).map_err(|e| refuse(&e.to_string()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(id) = model_folder_id(&path) {
                models.push(id);
            }
        }
        for id in self.models.keys() {
            models.retain(|m| m != id);
            match self.model(id) {
                Ok((path, config_dir)) => match config_dir.filter(|c| !c.is_dir()) {
                    Some(missing) => skipped.push(format!(
                        "base model {id}: config_dir {} does not exist",
                        missing.display()
                    )),
                    None if path.is_dir() && !path.join("model_index.json").is_file() => skipped
                        .push(format!(
                            "base model {id}: {} has no model_index.json",
                            path.display()
                        )),
                    None => models.push(id.clone()),
                },
                Err(e) => skipped.push(e.to_string()),
            }
        }
        models.sort();
        models.dedup();
        if models.is_empty() {
            let mut reason = "no base model is installed in the models folder".to_owned();
            if !skipped.is_empty() {
                reason = format!("{reason} ({})", skipped.join("; "));
            }
            return Err(refuse(&reason));
        }
        Ok(Installation {
            engine: Engine::Native,
            models,
            skipped,
        })
    }
}

/// The id of a diffusers model folder (its name), if `path` is one.
fn model_folder_id(path: &Path) -> Option<String> {
    if !path.join("model_index.json").is_file() {
        return None;
    }
    path.file_name()?.to_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diffusers(root: &Path, id: &str) {
        std::fs::create_dir_all(root.join(id)).unwrap();
        std::fs::write(root.join(id).join("model_index.json"), "{}").unwrap();
    }

    #[test]
    fn models_are_the_diffusers_folders_and_configured_files() {
        let tmp = tempfile::tempdir().unwrap();
        diffusers(tmp.path(), "tiny-sd");
        diffusers(tmp.path(), "sd15");
        std::fs::create_dir_all(tmp.path().join("not-a-model")).unwrap();
        std::fs::write(tmp.path().join("v1-5.safetensors"), b"x").unwrap();
        let options = NativeOptions::new(tmp.path())
            .with_model("sd15-file", "v1-5.safetensors")
            .with_model("sd21", "missing.safetensors");
        let install = options.check_install().unwrap();
        assert_eq!(install.models, ["sd15", "sd15-file", "tiny-sd"]);
        assert_eq!(install.skipped.len(), 1);
        assert!(
            install.skipped[0].contains("missing.safetensors"),
            "{install:?}"
        );
        assert_eq!(options.installed_models(), install.models);
    }

    #[test]
    fn a_missing_or_empty_models_folder_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("models");
        let err = NativeOptions::new(&missing).check_install().unwrap_err();
        assert_eq!(err.path, missing);
        let text = err.to_string();
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("loraflow models check"), "{text}");

        let err = NativeOptions::new(tmp.path()).check_install().unwrap_err();
        assert!(err.reason.contains("no base model"), "{err}");
    }
}
