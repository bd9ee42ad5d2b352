//! The startup check of an ai-toolkit installation: a worker that would
//! fail every job on this machine should say so when it starts, naming the
//! path, instead of burning each job's attempts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::options::{AiToolkitOptions, ModelSource};

/// How long `python --version` may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(20);

/// Run `python --version` in the checkout; the version line, or why not.
fn python_version(options: &AiToolkitOptions) -> std::result::Result<String, String> {
    let mut child = Command::new(&options.python)
        .arg("--version")
        .current_dir(&options.ai_toolkit_dir)
        .envs(&options.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python {:?} does not start: {e}", options.python))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > PYTHON_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "python {:?} did not answer `--version` within {}s",
                    options.python,
                    PYTHON_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for python {:?}: {e}", options.python)),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading python {:?}: {e}", options.python))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "python {:?} --version failed ({}): {text}",
            options.python, out.status
        ))
    }
}

/// What the check found on a usable installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// `Python 3.11.7`.
    pub python_version: String,
    /// Base models configured with a hub id: ai-toolkit downloads them on
    /// first use, so they are not checked here.
    pub hub_models: Vec<String>,
}

/// Check that `run.py` is in the checkout, that python runs, and that every
/// local model path exists. Every problem is listed in one
/// [`Error::Installation`].
pub fn check_installation(options: &AiToolkitOptions) -> Result<Installation> {
    let mut problems = Vec::new();
    let dir = &options.ai_toolkit_dir;
    let mut version = String::new();
    if !dir.is_dir() {
        problems.push(format!(
            "ai_toolkit_dir {} is not a folder; set it to the ai-toolkit checkout",
            dir.display()
        ));
    } else {
        let run_py = options.run_py();
        if !run_py.is_file() {
            problems.push(format!(
                "{} does not exist; ai_toolkit_dir must be the ai-toolkit checkout",
                run_py.display()
            ));
        }
        match python_version(options) {
            Ok(v) => version = v,
            Err(e) => problems.push(format!(
                "{e}; set `python` to the checkout's venv/bin/python"
            )),
        }
    }
    let mut hub_models = Vec::new();
    for (id, model) in &options.models {
        match options.source(model) {
            ModelSource::Local(path) if !path.exists() => problems.push(format!(
                "base model {id}: {} does not exist",
                path.display()
            )),
            ModelSource::Local(_) => {}
            ModelSource::Hub(_) => hub_models.push(id.clone()),
        }
    }
    if problems.is_empty() {
        Ok(Installation {
            python_version: version,
            hub_models,
        })
    } else {
        Err(Error::Installation { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::catalogue::ModelFamily;

    fn checkout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.py"), "print('ai-toolkit')\n").unwrap();
        dir
    }

    #[test]
    fn a_checkout_with_run_py_and_a_working_shell_passes() {
        let dir = checkout();
        std::fs::write(dir.path().join("sdxl.safetensors"), b"w").unwrap();
        let mut o = AiToolkitOptions::new(dir.path())
            .with_model("sdxl", "sdxl.safetensors", ModelFamily::Sdxl)
            .with_model(
                "flux-dev",
                "black-forest-labs/FLUX.1-dev",
                ModelFamily::Flux,
            );
        o.models_dir = Some(dir.path().to_path_buf());
        // Any program that exits 0 for `--version` stands in for python.
        o.python = "true".into();
        let found = check_installation(&o).unwrap();
        assert_eq!(found.hub_models, ["flux-dev"]);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let dir = checkout();
        std::fs::remove_file(dir.path().join("run.py")).unwrap();
        let mut o = AiToolkitOptions::new(dir.path()).with_model(
            "sdxl",
            "/nowhere/sdxl.safetensors",
            ModelFamily::Sdxl,
        );
        o.python = "/nowhere/python".into();
        let err = check_installation(&o).unwrap_err();
        let Error::Installation { problems } = &err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{}/run.py does not exist", dir.path().display())),
            "{text}"
        );
        assert!(
            text.contains("python \"/nowhere/python\" does not start"),
            "{text}"
        );
        assert!(
            text.contains("base model sdxl: /nowhere/sdxl.safetensors does not exist"),
            "{text}"
        );

        let o = AiToolkitOptions::new("/nowhere/ai-toolkit");
        let err = check_installation(&o).unwrap_err().to_string();
        assert!(
            err.contains("ai_toolkit_dir /nowhere/ai-toolkit is not a folder"),
            "{err}"
        );
    }

    #[test]
    fn a_python_that_fails_is_reported_with_its_output() {
        let dir = checkout();
        let mut o = AiToolkitOptions::new(dir.path());
        o.python = "false".into();
        let err = check_installation(&o).unwrap_err().to_string();
        assert!(err.contains("python \"false\" --version failed"), "{err}");
    }
}
