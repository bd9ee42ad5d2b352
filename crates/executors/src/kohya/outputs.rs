//! Finding what sd-scripts saved. The names follow `library/train_util.py`
//! at kohya-ss/sd-scripts@0005867ba509d2e1a5674b267e8286b561c0ed71:
//!
//! ```python
//! EPOCH_FILE_NAME = "{}-{:06d}"
//! def get_epoch_ckpt_name(args, ext, epoch_no):   # -> EPOCH_FILE_NAME.format(model_name, epoch_no) + ext
//! def get_last_ckpt_name(args, ext):              # -> model_name + ext
//! ```
//!
//! and `train_network.py` saves an epoch file only when
//! `(epoch + 1) % args.save_every_n_epochs == 0 and (epoch + 1) < num_train_epochs`;
//! the last epoch is always saved under the plain name
//! (`save_model(ckpt_name, network, global_step, num_train_epochs)`).
//!
//! Sample images are `sample/<output_name>_e<epoch:06d>_<prompt:02d>_<time><_seed>.png`
//! (`train_util.sample_image_inference`: `num_suffix = f"e{epoch:06d}"`).

use std::path::{Path, PathBuf};

use super::error::{Error, Result};

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

/// The epoch of an sd-scripts LoRA file name, if it is one of this run's:
/// `corgi-000003.safetensors` → 3, `corgi.safetensors` → `last_epoch`.
pub fn lora_epoch(file_name: &str, output_name: &str, last_epoch: u32) -> Option<u32> {
    let stem = file_name.strip_suffix(".safetensors")?;
    if stem == output_name {
        return Some(last_epoch);
    }
    let digits = stem.strip_prefix(output_name)?.strip_prefix('-')?;
    if digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The epoch of a sample image name, if it is one of this run's per-epoch
/// samples: `corgi_e000002_00_20260101120000_42.png` → 2.
pub fn sample_epoch(file_name: &str, output_name: &str) -> Option<u32> {
    let rest = file_name
        .strip_suffix(".png")?
        .strip_prefix(output_name)?
        .strip_prefix("_e")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (digits.len() >= 6 && rest[digits.len()..].starts_with('_'))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The LoRA files of the run in `output_dir`, by epoch. The final file must
/// be there: without it the run did not finish, whatever its exit status.
pub fn find_loras(output_dir: &Path, output_name: &str, last_epoch: u32) -> Result<Vec<Saved>> {
    let files = files_in(output_dir)?;
    let mut saved: Vec<Saved> = files
        .iter()
        .filter_map(|(name, path)| {
            lora_epoch(name, output_name, last_epoch).map(|epoch| Saved {
                epoch,
                path: path.clone(),
                file_name: name.clone(),
            })
        })
        .collect();
    let last = format!("{output_name}.safetensors");
    if !saved.iter().any(|s| s.file_name == last) {
        return Err(Error::NoOutput {
            expected: last,
            dir: output_dir.to_path_buf(),
            found: files.into_iter().map(|(n, _)| n).collect(),
        });
    }
    saved.sort();
    // An epoch file with the last epoch's number (a resumed run) yields to
    // the final file, which is what sd-scripts wrote last.
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

/// The per-epoch sample images of the run, by epoch.
pub fn find_samples(output_dir: &Path, output_name: &str) -> Result<Vec<Saved>> {
    let mut samples: Vec<Saved> = files_in(&output_dir.join("sample"))?
        .into_iter()
        .filter_map(|(name, path)| {
            sample_epoch(&name, output_name).map(|epoch| Saved {
                epoch,
                path,
                file_name: name,
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
    fn epoch_and_final_names_are_recognised_and_others_not() {
        assert_eq!(lora_epoch("corgi-000003.safetensors", "corgi", 10), Some(3));
        assert_eq!(lora_epoch("corgi.safetensors", "corgi", 10), Some(10));
        assert_eq!(
            lora_epoch("corgi-1234567.safetensors", "corgi", 10),
            Some(1234567)
        );
        for other in [
            "corgi-step00000100.safetensors",
            "corgi-000003-state",
            "corgi-v2-000001.safetensors",
            "corgi-000003.ckpt",
            "other.safetensors",
        ] {
            assert_eq!(lora_epoch(other, "corgi", 10), None, "{other}");
        }
    }

    #[test]
    fn per_epoch_samples_are_recognised_and_per_step_ones_not() {
        assert_eq!(
            sample_epoch("corgi_e000002_00_20260101120000_42.png", "corgi"),
            Some(2)
        );
        assert_eq!(
            sample_epoch("corgi_e000002_01_20260101120000.png", "corgi"),
            Some(2)
        );
        assert_eq!(
            sample_epoch("corgi_000120_00_20260101120000.png", "corgi"),
            None
        );
        assert_eq!(sample_epoch("other_e000002_00_1.png", "corgi"), None);
    }

    #[test]
    fn a_run_without_its_final_file_did_not_finish() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corgi-000001.safetensors"), b"1").unwrap();
        let err = find_loras(dir.path(), "corgi", 2).unwrap_err();
        assert!(
            err.to_string().contains("wrote no corgi.safetensors")
                && err.to_string().contains("corgi-000001.safetensors"),
            "{err}"
        );
        std::fs::write(dir.path().join("corgi.safetensors"), b"2").unwrap();
        std::fs::write(dir.path().join("corgi-000002.safetensors"), b"stale").unwrap();
        let found = find_loras(dir.path(), "corgi", 2).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|s| (s.epoch, s.file_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [(1, "corgi-000001.safetensors"), (2, "corgi.safetensors")]
        );
    }
}
