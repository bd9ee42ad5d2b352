//! Reading a kohya-style dataset folder.
//!
//! Images (`png`, `jpg`/`jpeg`, `webp`) anywhere under the folder, each with an optional
//! caption sidecar of the same stem (`.txt`, else `.caption`). A folder named `N_name` (e.g.
//! `10_corgi`) repeats the images under it `N` times per epoch; images outside such a folder use
//! the configured `num_repeats`. Captions given by the caller (for example from a labelling step)
//! replace sidecars, keyed by the image's path relative to the folder with `/` separators.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::caption::{tags, with_trigger};
use crate::error::{Error, Result};

/// Image extensions read (lower case).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];
/// Caption sidecar extensions, in order of preference.
pub const CAPTION_EXTENSIONS: [&str; 2] = ["txt", "caption"];

/// One training image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The file.
    pub path: PathBuf,
    /// Path relative to the dataset folder, `/`-separated.
    pub name: String,
    /// The folder it counts under in `ss_dataset_dirs` and `ss_tag_frequency`.
    pub dir: String,
    /// Times seen per epoch.
    pub repeats: usize,
    /// The caption, trigger word included.
    pub caption: String,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// `N` of a folder named `N_name`.
fn repeats_of(folder: &str) -> Option<std::result::Result<usize, String>> {
    let (n, rest) = folder.split_once('_')?;
    if n.is_empty() || rest.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(n.parse::<usize>().map_err(|e| e.to_string()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::read(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::read(dir, err)))
        .collect::<Result<_>>()?;
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The caption sidecar of an image, read, newlines folded into spaces.
pub fn read_sidecar(image: &Path) -> Result<Option<String>> {
    for ext in CAPTION_EXTENSIONS {
        let path = image.with_extension(ext);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::read(&path, e))?;
            return Ok(Some(text.replace(['\r', '\n'], " ").trim().to_string()));
        }
    }
    Ok(None)
}

/// Lists the images of a dataset folder with their repeats and captions.
///
/// `overrides` maps relative image names to captions that replace sidecars; `trigger` is put
/// first in every caption.
pub fn scan(
    root: &Path,
    num_repeats: usize,
    trigger: Option<&str>,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<ImageEntry>> {
    if !root.is_dir() {
        return Err(Error::invalid(
            "dataset.dir",
            root.display(),
            "is not a folder",
        ));
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    if files.is_empty() {
        return Err(Error::invalid(
            "dataset.dir",
            root.display(),
            format!("contains no images ({})", IMAGE_EXTENSIONS.join(", ")),
        ));
    }
    let root_name = root
        .file_name()
        .map_or_else(|| ".".to_string(), |n| n.to_string_lossy().into_owned());
    let mut entries = Vec::with_capacity(files.len());
    for path in files {
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = rel.to_string_lossy().replace('\\', "/");
        // The nearest enclosing `N_name` folder decides the repeats.
        let mut repeats = num_repeats;
        let mut dir = root_name.clone();
        for folder in rel.parent().into_iter().flat_map(Path::iter).rev() {
            let folder = folder.to_string_lossy();
            if let Some(n) = repeats_of(&folder) {
                repeats = n.map_err(|reason| {
                    Error::invalid("dataset.dir", format!("{folder:?}"), reason)
                })?;
                dir = folder.into_owned();
                break;
            }
        }
        if repeats == 0 {
            return Err(Error::invalid(
                "dataset.dir",
                format!("{dir:?}"),
                "a repeat count of 0 would never train these images",
            ));
        }
        let raw = match overrides.get(&name) {
            Some(c) => c.clone(),
            None => read_sidecar(&path)?.unwrap_or_default(),
        };
        let caption = with_trigger(&raw, trigger.unwrap_or_default());
        entries.push(ImageEntry {
            path,
            name,
            dir,
            repeats,
            caption,
        });
    }
    Ok(entries)
}

/// sd-scripts' `ss_tag_frequency`: per folder, how many images carry each tag.
pub fn tag_frequency(entries: &[ImageEntry]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for e in entries {
        let counts = out.entry(e.dir.clone()).or_default();
        for tag in tags(&e.caption) {
            *counts.entry(tag.to_string()).or_default() += 1;
        }
    }
    out
}

/// sd-scripts' `ss_dataset_dirs`: per folder, `(n_repeats, img_count)`.
pub fn dataset_dirs(entries: &[ImageEntry]) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in entries {
        let slot = out.entry(e.dir.clone()).or_insert((e.repeats, 0));
        slot.1 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_folders_are_recognised() {
        assert_eq!(repeats_of("10_corgi"), Some(Ok(10)));
        assert_eq!(repeats_of("corgi"), None);
        assert_eq!(repeats_of("a_b"), None);
        assert_eq!(repeats_of("_b"), None);
    }
}
