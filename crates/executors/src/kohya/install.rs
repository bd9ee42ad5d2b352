//! Whether sd-scripts can run here as configured: the checkout, the
//! launcher's program, and per base model its checkpoint and the training
//! script of its family.

use std::path::{Path, PathBuf};

use loraflow_core::catalogue::{Engine, ModelFamily};

use super::options::KohyaOptions;
use crate::install::{EngineRefused, Installation};

impl KohyaOptions {
    /// Check the setup when a worker starts. A missing checkout or launcher
    /// refuses the engine; a model whose checkpoint or script is missing is
    /// skipped with the reason, and the engine is refused when none is left.
    /// A model without a `family` is checked against the SD1.x script
    /// (`train_network.py`), the one most models use.
    pub fn check_install(&self) -> Result<Installation, EngineRefused> {
        let refuse = |path: &Path, reason: &str, fix: &str| EngineRefused {
            engine: Engine::Kohya,
            path: path.to_path_buf(),
            reason: reason.to_owned(),
            fix: fix.to_owned(),
        };
        let dir = &self.sd_scripts_dir;
        if !dir.is_dir() {
            return Err(refuse(
                dir,
                "sd_scripts_dir does not exist",
                "clone https://github.com/kohya-ss/sd-scripts there (and install its requirements), \
                 or point sd_scripts_dir at the checkout",
            ));
        }
        let program = self.launcher.first().map(String::as_str).unwrap_or("");
        if find_program(program, dir).is_none() {
            return Err(refuse(
                Path::new(program),
                "the launcher's program is not found (neither a file nor on PATH)",
                "set launcher to the python (or accelerate) of sd-scripts' virtual environment, \
                 e.g. [\"/opt/sd-scripts/venv/bin/python\"]",
            ));
        }
        let mut models = Vec::new();
        let mut skipped = Vec::new();
        for (id, model) in &self.models {
            let family = model.family.unwrap_or(ModelFamily::Sd15);
            let script = dir.join(self.scripts.for_family(family));
            if !script.is_file() {
                skipped.push(format!(
                    "base model {id}: the {family} training script {} does not exist",
                    script.display()
                ));
            } else if !model.checkpoint.exists() {
                skipped.push(format!(
                    "base model {id}: the checkpoint {} does not exist",
                    model.checkpoint.display()
                ));
            } else {
                models.push(id.clone());
            }
        }
        if models.is_empty() {
            let reason = if skipped.is_empty() {
                "no base model is configured".to_owned()
            } else {
                format!("no base model can be trained: {}", skipped.join("; "))
            };
            return Err(refuse(
                dir,
                &reason,
                "add [models.<id>] checkpoint = \"/path/to/model.safetensors\" to the kohya \
                 configuration, and check that the sd-scripts checkout is complete",
            ));
        }
        Ok(Installation {
            engine: Engine::Kohya,
            models,
            skipped,
        })
    }
}

/// Where `program` is: a path (relative ones against the checkout, where
/// scripts run) or a name on `PATH`.
fn find_program(program: &str, run_dir: &Path) -> Option<PathBuf> {
    if program.trim().is_empty() {
        return None;
    }
    let path = Path::new(program);
    if path.components().count() > 1 {
        let full = run_dir.join(path);
        return full.is_file().then_some(full);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Setup {
        _tmp: tempfile::TempDir,
        scripts: PathBuf,
        checkpoint: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let scripts = tmp.path().join("sd-scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        std::fs::write(scripts.join("train_network.py"), "").unwrap();
        let checkpoint = tmp.path().join("sd15.safetensors");
        std::fs::write(&checkpoint, b"weights").unwrap();
        Setup {
            _tmp: tmp,
            scripts,
            checkpoint,
        }
    }

    fn options(s: &Setup) -> KohyaOptions {
        let mut o = KohyaOptions::new(&s.scripts).with_model("sd15", &s.checkpoint);
        o.launcher = vec!["sh".into()];
        o
    }

    #[test]
    fn a_complete_setup_lists_its_models() {
        let s = setup();
        let mut o = options(&s);
        o = o.with_model("sd21", s.scripts.join("missing.safetensors"));
        let install = o.check_install().unwrap();
        assert_eq!(install.models, ["sd15"]);
        assert_eq!(install.skipped.len(), 1);
        assert!(
            install.skipped[0].contains("missing.safetensors"),
            "{install:?}"
        );
        assert_eq!(
            install.advertised(),
            [loraflow_core::executor::InstalledModel::new(
                Engine::Kohya,
                "sd15"
            )]
        );
    }

    #[test]
    fn a_missing_checkout_is_refused_naming_it() {
        let s = setup();
        let mut o = options(&s);
        o.sd_scripts_dir = s.scripts.join("nope");
        let err = o.check_install().unwrap_err();
        assert_eq!(err.path, s.scripts.join("nope"));
        assert!(
            err.to_string().contains("sd_scripts_dir does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_script_leaves_no_model_and_is_refused_naming_the_script() {
        let s = setup();
        std::fs::remove_file(s.scripts.join("train_network.py")).unwrap();
        let err = options(&s).check_install().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&s.scripts.join("train_network.py").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn a_missing_launcher_is_refused_naming_it() {
        let s = setup();
        let mut o = options(&s);
        o.launcher = vec!["python-that-does-not-exist-9".into()];
        let err = o.check_install().unwrap_err();
        assert_eq!(err.path, Path::new("python-that-does-not-exist-9"));
        o.launcher = vec!["venv/bin/python".into()];
        let err = o.check_install().unwrap_err();
        assert!(err.to_string().contains("venv/bin/python"), "{err}");
    }

    #[test]
    fn no_configured_model_is_refused() {
        let s = setup();
        let mut o = options(&s);
        o.models.clear();
        assert!(
            o.check_install()
                .unwrap_err()
                .reason
                .contains("no base model")
        );
    }
}
