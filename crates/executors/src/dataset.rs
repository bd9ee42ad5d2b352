//! What is in a kohya-style dataset folder: images, caption sidecars, and
//! anything else (which is reported, never skipped silently).

use std::path::{Path, PathBuf};

/// Image extensions loraflow trains on.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];
/// Caption sidecar extensions, in order of preference.
pub const CAPTION_EXTENSIONS: [&str; 2] = ["txt", "caption"];
/// Files the labelling step writes next to a dataset; never training input.
pub const LABELS_FILE: &str = "labels.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Image,
    Caption,
    Other,
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

pub fn classify(path: &Path) -> FileKind {
    match extension(path) {
        Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) => FileKind::Image,
        Some(e) if CAPTION_EXTENSIONS.contains(&e.as_str()) => FileKind::Caption,
        _ => FileKind::Other,
    }
}

/// The sidecar caption of `image`, if one exists.
pub fn sidecar(image: &Path) -> Option<PathBuf> {
    CAPTION_EXTENSIONS
        .iter()
        .map(|ext| image.with_extension(ext))
        .find(|p| p.is_file())
}

/// A path relative to the dataset root, with `/` separators: how files are
/// named in manifests, labels and error messages.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Images under `root`, sorted.
pub fn images(files: &[PathBuf]) -> Vec<&PathBuf> {
    files
        .iter()
        .filter(|f| classify(f) == FileKind::Image)
        .collect()
}
