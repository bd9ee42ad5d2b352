//! Finding what ai-toolkit saved. The names follow
//! `jobs/process/BaseSDTrainProcess.py` at
//! ostris/ai-toolkit@27a03a91f23eb1b757d5ec2e80ee3e129cfcc350 (`save_root`
//! is `<training_folder>/<name>`, `BaseTrainProcess`):
//!
//! ```python
//! step_num = f"_{str(step).zfill(9)}"              # save(step): every save_every steps, not at step 0
//! filename = f'{self.job.name}{step_num}.safetensors'
//! self.save()                                      # after the last step: '<name>.safetensors'
//! filename = f"[time]_{step_num}_[count].{self.sample_config.ext}"   # in <save_root>/samples
//! ```
//!
//! so `corgi_000000015.safetensors`, `corgi.safetensors` and
//! `1724085406830__000000015_0.jpg` (`[time]`: milliseconds since the
//! epoch; `[count]`: the prompt's index, zero-padded). The samples after
//! the last step are named after `train.steps`.

use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::params::StepPlan;

/// One saved file and the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Saved {
    pub epoch: u32,
    pub path: PathBuf,
    pub file_name: String,
}

fn files_in(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        if path.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

fn step_digits(digits: &str) -> Option<u64> {
    (digits.len() >= 9 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The step of a LoRA file of this run: `corgi_000000015.safetensors` → 15.
pub fn lora_step(file_name: &str, name: &str) -> Option<u64> {
    let digits = file_name
        .strip_suffix(".safetensors")?
        .strip_prefix(name)?
        .strip_prefix('_')?;
    step_digits(digits)
}

/// The step of a sample image: `1724085406830__000000015_0.jpg` → 15.
pub fn sample_step(file_name: &str) -> Option<u64> {
    let (stem, ext) = file_name.rsplit_once('.')?;
    if !["jpg", "jpeg", "png", "webp"].contains(&ext) {
        return None;
    }
    let (time, rest) = stem.split_once("__")?;
    if time.is_empty() || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (digits, count) = rest.split_once('_')?;
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    step_digits(digits)
}

/// The LoRA files of the run in `save_root`, by epoch. The final file must
/// be there: without it the run did not finish, whatever its exit status.
pub fn find_loras(save_root: &Path, name: &str, plan: &StepPlan) -> Result<Vec<Saved>> {
    let files = files_in(save_root)?;
    let last = format!("{name}.safetensors");
    let mut saved: Vec<Saved> = files
        .iter()
        .filter_map(|(file, path)| {
            let epoch = if *file == last {
                Some(plan.epochs)
            } else {
                lora_step(file, name).and_then(|s| plan.epoch_of_save(s))
            }?;
            Some(Saved {
                epoch,
                path: path.clone(),
                file_name: file.clone(),
            })
        })
        .collect();
    if !saved.iter().any(|s| s.file_name == last) {
        return Err(Error::NoOutput {
            expected: last,
            dir: save_root.to_path_buf(),
            found: files.into_iter().map(|(n, _)| n).collect(),
        });
    }
    saved.sort();
    // A step file of the last epoch (a resumed run) yields to the final file.
    saved.dedup_by(|later, earlier| {
        later.epoch == earlier.epoch && {
            if later.file_name == last {
                std::mem::swap(later, earlier);
            }
            true
        }
    });
    Ok(saved)
}

/// The sample images of the run at epoch ends, by epoch.
pub fn find_samples(save_root: &Path, plan: &StepPlan) -> Result<Vec<Saved>> {
    let mut samples: Vec<Saved> = files_in(&save_root.join("samples"))?
        .into_iter()
        .filter_map(|(file, path)| {
            let epoch = plan.epoch_of_save(sample_step(&file)?)?;
            Some(Saved {
                epoch,
                path,
                file_name: file,
            })
        })
        .collect();
    samples.sort();
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_and_sample_names_are_recognised_and_others_not() {
        assert_eq!(lora_step("corgi_000000015.safetensors", "corgi"), Some(15));
        assert_eq!(
            lora_step("corgi_1000000000.safetensors", "corgi"),
            Some(1_000_000_000)
        );
        for other in [
            "corgi.safetensors",
            "corgi_15.safetensors",
            "corgi_000000015.pt",
            "optimizer.pt",
            "other_000000015.safetensors",
        ] {
            assert_eq!(lora_step(other, "corgi"), None, "{other}");
        }
        assert_eq!(sample_step("1724085406830__000000015_0.jpg"), Some(15));
        assert_eq!(sample_step("1724085406830__000000045_12.png"), Some(45));
        assert_eq!(sample_step("1724085406830_0.jpg"), None);
        assert_eq!(sample_step("x__000000015_0.jpg"), None);
        assert_eq!(sample_step("1724085406830__000000015_0.txt"), None);
    }

    #[test]
    fn a_run_without_its_final_file_did_not_finish() {
        let plan = StepPlan {
            epochs: 2,
            steps_per_epoch: 15,
            steps: 30,
            save_every: 15,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corgi_000000015.safetensors"), b"1").unwrap();
        let err = find_loras(dir.path(), "corgi", &plan).unwrap_err();
        assert!(
            err.to_string().contains("wrote no corgi.safetensors")
                && err.to_string().contains("corgi_000000015.safetensors"),
            "{err}"
        );
        std::fs::write(dir.path().join("corgi.safetensors"), b"2").unwrap();
        std::fs::write(dir.path().join("corgi_000000030.safetensors"), b"stale").unwrap();
        let found = find_loras(dir.path(), "corgi", &plan).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|s| (s.epoch, s.file_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [(1, "corgi_000000015.safetensors"), (2, "corgi.safetensors")]
        );
    }
}
