//! The dataset as sd-scripts reads it: one folder `<num_repeats>_<subject>`
//! (the DreamBooth-style layout of `--train_data_dir`, which
//! `config_util.generate_dreambooth_subsets_config_by_subdirs` parses as
//! `num_repeats, class_tokens = name.split("_", 1)`) holding every image and,
//! beside it, a `.txt` caption with the same stem (see
//! [`crate::external::image_folder`]). The generated dataset config also
//! names the folder and its repeats explicitly, because with a dataset
//! config sd-scripts does not read repeats from folder names.

use std::path::{Path, PathBuf};

pub use crate::external::image_folder::{Layout, MAX_NAME_BYTES, fit_file_name, safe_name};

use super::error::Result;
use crate::label::Labels;

/// The folder name sd-scripts gives `num_repeats` and class tokens by:
/// `10_corgi`. The subject is reduced to letters, digits, `-` and `_` so it
/// is a safe path component everywhere.
pub fn folder_name(num_repeats: u32, subject: &str) -> String {
    format!("{num_repeats}_{}", safe_name(subject, "subject"))
}

/// Lay out the dataset under `dataset_root` (its files listed in `files`)
/// in `<train_root>/<num_repeats>_<subject>`.
pub fn write_layout(
    dataset_root: &Path,
    files: &[PathBuf],
    labels: Option<&Labels>,
    train_root: &Path,
    num_repeats: u32,
    subject: &str,
) -> Result<Layout> {
    let image_dir = train_root.join(folder_name(num_repeats, subject));
    Ok(crate::external::image_folder::write_layout(
        dataset_root,
        files,
        labels,
        &image_dir,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_subject_makes_a_short_folder_name() {
        assert!(folder_name(10, &"corgi".repeat(2048)).len() <= MAX_NAME_BYTES + 3);
        assert_eq!(folder_name(10, "a corgi!"), "10_a_corgi");
    }
}
