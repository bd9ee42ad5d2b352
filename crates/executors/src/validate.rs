//! `validate_dataset`: decode every image, check it against the limits, find
//! duplicates by content, and write a manifest. Every bad file is reported by
//! name with its reason, all at once; none is skipped silently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use image::ImageFormat;
use loraflow_core::artifact::{ArtifactKind, Sha256};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use serde::{Deserialize, Serialize};

use crate::dataset::{self, FileKind};
use crate::util::{blocking, cancelled, from_artifact, internal, invalid_input};

/// Limits a dataset must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidateOptions {
    /// Smallest accepted width or height, in pixels.
    pub min_side: u32,
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    pub max_file_bytes: u64,
    pub max_images: usize,
    /// Accept byte-identical images (they weigh double in training).
    pub allow_duplicates: bool,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            min_side: 64,
            max_side: 8192,
            max_file_bytes: 50 * 1024 * 1024,
            max_images: 1000,
            allow_duplicates: false,
        }
    }
}

/// One image of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestImage {
    pub file: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub sha256: Sha256,
    /// Caption sidecar, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_file: Option<String>,
}

/// What `validate_dataset` writes: the dataset as admitted for training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub images: Vec<ManifestImage>,
    pub image_count: usize,
    pub total_bytes: u64,
}

/// The `validate_dataset` executor.
#[derive(Debug, Clone, Default)]
pub struct ValidateDataset {
    pub options: ValidateOptions,
}

enum Checked {
    Image(ManifestImage),
    Bad(String),
}

fn check_image(root: PathBuf, path: PathBuf, opts: ValidateOptions) -> Checked {
    let name = dataset::relative(&root, &path);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return Checked::Bad(format!("{name}: cannot be read: {e}")),
    };
    if bytes.len() as u64 > opts.max_file_bytes {
        return Checked::Bad(format!(
            "{name}: {} bytes is larger than the limit of {} bytes",
            bytes.len(),
            opts.max_file_bytes
        ));
    }
    let format = match image::guess_format(&bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        Ok(other) => {
            return Checked::Bad(format!(
                "{name}: unsupported format {}; use PNG, JPEG or WebP",
                other
                    .extensions_str()
                    .first()
                    .unwrap_or(&"unknown")
                    .to_ascii_uppercase()
            ));
        }
        Err(_) => return Checked::Bad(format!("{name}: not an image (unrecognised content)")),
    };
    // Decode the whole image: a valid header over truncated data is the
    // classic corrupt upload, and only a full decode finds it.
    let decoded = match image::load_from_memory_with_format(&bytes, format) {
        Ok(img) => img,
        Err(e) => {
            return Checked::Bad(format!(
                "{name}: corrupt or truncated {format:?} image: {e}"
            ));
        }
    };
    let (w, h) = (decoded.width(), decoded.height());
    if w.min(h) < opts.min_side {
        return Checked::Bad(format!(
            "{name}: {w}x{h} is too small; each side must be at least {} px",
            opts.min_side
        ));
    }
    if w.max(h) > opts.max_side {
        return Checked::Bad(format!(
            "{name}: {w}x{h} is too large; each side must be at most {} px",
            opts.max_side
        ));
    }
    Checked::Image(ManifestImage {
        file: name,
        size_bytes: bytes.len() as u64,
        width: w,
        height: h,
        format: format!("{format:?}").to_ascii_lowercase(),
        sha256: Sha256::of(&bytes),
        caption_file: dataset::sidecar(&path).map(|p| dataset::relative(&root, &p)),
    })
}

/// At most this many problems are quoted in the step's error message; the
/// full list is written as an artifact (`problems.txt`) and referenced.
pub const PROBLEMS_SHOWN: usize = 20;

/// The step's error for `problems`: the first [`PROBLEMS_SHOWN`], the count,
/// and where the full list is, when it was written.
fn problems_error(
    problems: &[String],
    full_list: Option<&loraflow_core::artifact::Artifact>,
) -> StepError {
    let shown = problems.len().min(PROBLEMS_SHOWN);
    let mut message = format!(
        "{} problem{} in the dataset: {}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems[..shown].join("; ")
    );
    if problems.len() > shown {
        message.push_str(&format!("; and {} more", problems.len() - shown));
        if let Some(a) = full_list {
            message.push_str(&format!(
                " (every one is listed in {}, sha256 {})",
                a.uri, a.sha256
            ));
        }
    }
    invalid_input(message)
}

impl ValidateDataset {
    /// Check the dataset under `root` (files already local).
    pub async fn check(
        &self,
        root: PathBuf,
        files: Vec<PathBuf>,
        ctx: Option<&StepContext>,
    ) -> Result<Manifest, StepError> {
        self.inspect(root, files, ctx)
            .await?
            .map_err(|problems| problems_error(&problems, None))
    }

    /// The manifest, or every problem found (the outer error: cancelled,
    /// or the check itself failed).
    async fn inspect(
        &self,
        root: PathBuf,
        files: Vec<PathBuf>,
        ctx: Option<&StepContext>,
    ) -> Result<Result<Manifest, Vec<String>>, StepError> {
        let mut problems = Vec::new();
        let mut images = Vec::new();
        let total = files.len().max(1);
        for (i, path) in files.into_iter().enumerate() {
            if ctx.is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled());
            }
            match dataset::classify(&path) {
                FileKind::Caption => {}
                FileKind::Other if path.file_name().is_some_and(|n| n == dataset::LABELS_FILE) => {}
                FileKind::Other => problems.push(format!(
                    "{}: unsupported file type; a dataset holds PNG, JPEG or WebP images and .txt/.caption sidecars",
                    dataset::relative(&root, &path)
                )),
                FileKind::Image => {
                    let (root, opts) = (root.clone(), self.options.clone());
                    match blocking(move || check_image(root, path, opts)).await? {
                        Checked::Image(img) => images.push(img),
                        Checked::Bad(p) => problems.push(p),
                    }
                }
            }
            if let Some(ctx) = ctx {
                ctx.report(StepProgress {
                    percent: (i + 1) as f32 * 100.0 / total as f32,
                    step: Some(i as u64 + 1),
                    total_steps: Some(total as u64),
                    message: Some("validating images".into()),
                    ..Default::default()
                });
            }
        }
        if !self.options.allow_duplicates {
            let mut first: BTreeMap<&Sha256, &str> = BTreeMap::new();
            for img in &images {
                if let Some(original) = first.insert(&img.sha256, &img.file) {
                    problems.push(format!(
                        "{}: duplicate of {original} (same content)",
                        img.file
                    ));
                    first.insert(&img.sha256, original);
                }
            }
        }
        if images.is_empty() && problems.is_empty() {
            problems.push("the dataset contains no images".into());
        }
        if images.len() > self.options.max_images {
            problems.push(format!(
                "the dataset has {} images; at most {} are accepted",
                images.len(),
                self.options.max_images
            ));
        }
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
        let total_bytes = images.iter().map(|i| i.size_bytes).sum();
        Ok(Ok(Manifest {
            image_count: images.len(),
            total_bytes,
            images,
        }))
    }
}

#[async_trait]
impl Executor for ValidateDataset {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::VALIDATE_DATASET.into()]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let root = ctx.workdir().join("dataset");
        let files = ctx
            .artifacts()
            .fetch_dir(&step.dataset.uri, &root)
            .await
            .map_err(from_artifact)?;
        let manifest = match self.inspect(root, files, Some(ctx)).await? {
            Ok(m) => m,
            Err(problems) => {
                // A long list travels as an artifact, not in the message.
                let list = if problems.len() > PROBLEMS_SHOWN {
                    let path = ctx.workdir().join("problems.txt");
                    let text: String = problems.iter().map(|p| format!("{p}\n")).collect();
                    match tokio::fs::write(&path, text).await {
                        Ok(()) => ctx
                            .artifacts()
                            .put(&path, "problems.txt", ArtifactKind::Report, None)
                            .await
                            .ok(),
                        Err(_) => None,
                    }
                } else {
                    None
                };
                return Err(problems_error(&problems, list.as_ref()));
            }
        };
        // The manifest (every image with its digest) is an artifact; the
        // outcome carries its reference and counts only.
        let path = ctx.workdir().join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| internal(e.to_string()))?;
        tokio::fs::write(&path, json)
            .await
            .map_err(|e| internal(format!("writing the manifest: {e}")))?;
        let artifact = ctx
            .artifacts()
            .put(&path, "manifest.json", ArtifactKind::Manifest, None)
            .await
            .map_err(from_artifact)?;
        Ok(StepOutput {
            outputs: serde_json::json!({
                "image_count": manifest.image_count,
                "total_bytes": manifest.total_bytes,
            }),
            artifacts: vec![artifact],
            epochs: vec![],
        })
    }
}
