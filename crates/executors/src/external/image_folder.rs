//! The dataset as external trainers read it: one folder holding every image
//! and, beside it, a `.txt` caption with the same stem (sd-scripts'
//! DreamBooth-style folders, ai-toolkit's `folder_path`).
//!
//! Captions come from the `label` step's `labels.json` when there is one,
//! otherwise from the dataset's own sidecars. Both trainers read a caption
//! file's text as one caption (sd-scripts reads the first line and refuses
//! an empty one), so captions are written on one line and blank ones are
//! not written (the image then trains on the engine's default caption).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{Error, Result};
use crate::dataset::{self, FileKind};
use crate::label::Labels;

/// What was laid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The folder of images and captions.
    pub image_dir: PathBuf,
    pub images: usize,
    /// Images captioned from `labels.json`.
    pub from_labels: usize,
    /// Images captioned from their sidecar file.
    pub from_sidecars: usize,
    /// Images without a caption (relative names); they train on the class tokens.
    pub uncaptioned: Vec<String>,
    /// Files that are neither images nor captions (relative names), left out.
    pub skipped: Vec<String>,
    /// `labels.json` entries for images the dataset does not have.
    pub unused_labels: Vec<String>,
}

/// `name` as a file-name stem: letters, digits, `-` and `_`; anything else
/// becomes `_`. `fallback` when nothing is left.
pub fn safe_name(name: &str, fallback: &str) -> String {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('_');
    if cleaned.is_empty() {
        fallback.to_owned()
    } else {
        fit_file_name(cleaned)
    }
}

/// Longest part of a file name taken from user input, in bytes: whatever
/// the limits allow a subject to be, names built from it stay well below
/// the 255 bytes a file name may have.
pub const MAX_NAME_BYTES: usize = 64;

/// `name` cut (at a character boundary) to [`MAX_NAME_BYTES`].
pub fn fit_file_name(name: &str) -> String {
    let mut end = 0;
    for (i, c) in name.char_indices() {
        if i + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        end = i + c.len_utf8();
    }
    name[..end].to_owned()
}

fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Link `src` to `dst`, or copy it where links are not possible (another
/// file system): the images are read-only input either way.
fn link_or_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map(|_| ())
}

/// Lay out the dataset under `dataset_root` (its files listed in `files`)
/// in the folder `image_dir`. Nested folders are flattened: `sub/a.png` becomes
/// `sub__a.png`; two images that would share a caption file (`a.png`,
/// `a.jpg`) get distinct stems (`a`, `a-2`).
pub fn write_layout(
    dataset_root: &Path,
    files: &[PathBuf],
    labels: Option<&Labels>,
    image_dir: &Path,
) -> Result<Layout> {
    let image_dir = image_dir.to_path_buf();
    std::fs::create_dir_all(&image_dir)
        .map_err(|e| Error::io(format!("creating {}", image_dir.display()), e))?;

    let mut layout = Layout {
        image_dir: image_dir.clone(),
        images: 0,
        from_labels: 0,
        from_sidecars: 0,
        uncaptioned: Vec::new(),
        skipped: Vec::new(),
        unused_labels: Vec::new(),
    };
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort();
    let mut stems = BTreeSet::new();
    let mut labelled = BTreeSet::new();
    for file in sorted {
        let name = dataset::relative(dataset_root, file);
        match dataset::classify(file) {
            FileKind::Caption => continue,
            FileKind::Other => {
                if name != dataset::LABELS_FILE {
                    layout.skipped.push(name);
                }
                continue;
            }
            FileKind::Image => {}
        }
        let flat = name.replace('/', "__");
        let flat_path = Path::new(&flat);
        let stem = flat_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| flat.clone());
        let ext = flat_path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unique = (1..)
            .map(|n| {
                if n == 1 {
                    stem.clone()
                } else {
                    format!("{stem}-{n}")
                }
            })
            .find(|s| !stems.contains(&s.to_lowercase()))
            .expect("an unused stem exists");
        stems.insert(unique.to_lowercase());

        let target = image_dir.join(format!("{unique}.{ext}"));
        link_or_copy(file, &target)
            .map_err(|e| Error::io(format!("placing {name} in {}", image_dir.display()), e))?;
        layout.images += 1;

        let from_labels = labels.and_then(|l| l.images.get(&name)).map(|l| {
            labelled.insert(name.clone());
            one_line(&l.caption)
        });
        let caption = match from_labels {
            Some(c) => Some((c, true)),
            None => match dataset::sidecar(file) {
                Some(sidecar) => {
                    let text = std::fs::read_to_string(&sidecar).map_err(|e| {
                        Error::Dataset(format!(
                            "{}: caption is not readable text: {e}",
                            dataset::relative(dataset_root, &sidecar)
                        ))
                    })?;
                    Some((one_line(&text), false))
                }
                None => None,
            },
        };
        match caption {
            Some((text, from_labels)) if !text.is_empty() => {
                let caption_file = image_dir.join(format!("{unique}.txt"));
                std::fs::write(&caption_file, format!("{text}\n"))
                    .map_err(|e| Error::io(format!("writing {}", caption_file.display()), e))?;
                if from_labels {
                    layout.from_labels += 1;
                } else {
                    layout.from_sidecars += 1;
                }
            }
            _ => layout.uncaptioned.push(name),
        }
    }
    if layout.images == 0 {
        return Err(Error::Dataset(format!(
            "no images to train on (looked for {}); the dataset has {} other files",
            dataset::IMAGE_EXTENSIONS.join(", "),
            layout.skipped.len()
        )));
    }
    if let Some(labels) = labels {
        layout.unused_labels = labels
            .images
            .keys()
            .filter(|k| !labelled.contains(*k))
            .cloned()
            .collect();
    }
    Ok(layout)
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// Regression: a 10 KB subject failed training with "File name too
    /// long (os error 36)": names made from it are cut.
    #[test]
    fn a_10_kb_subject_makes_short_file_names() {
        let subject = "corgi".repeat(2048);
        let name = safe_name(&subject, "lora");
        assert_eq!(name.len(), MAX_NAME_BYTES);
        // Multi-byte characters are cut at a boundary.
        let wide = safe_name(&"é".repeat(100), "lora");
        assert!(wide.len() <= MAX_NAME_BYTES && wide.chars().all(|c| c == 'é'));
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(format!("{name}.safetensors")), b"x").unwrap();
        assert_eq!(safe_name("corgi", "lora"), "corgi");
    }
}
