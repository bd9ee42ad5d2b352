//! Artifacts: files a step produced (LoRA weights, samples, manifests). The event
//! log holds their URI and digest, never the bytes.

use serde::{Deserialize, Serialize};

/// A SHA-256 digest, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sha256(pub String);

impl Sha256 {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(hex::encode(sha2::Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an artifact is, so views can group them without parsing names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A dataset manifest written by `validate_dataset`.
    Manifest,
    /// Caption sidecars and tag frequencies written by `label`.
    Labels,
    /// A LoRA weights file (kohya safetensors).
    Lora,
    /// A sample image.
    Sample,
    /// Resumable training state.
    Checkpoint,
    /// A loss curve or other report.
    Report,
    /// A published LoRA at its permanent location.
    Published,
    Other,
}

/// Name of the loss plot a training step reports (kind [`ArtifactKind::Report`]).
pub const LOSS_PLOT: &str = "loss_curve.png";
/// Name of the loss plot drawn again with the approved epoch highlighted (by `publish`).
pub const APPROVED_LOSS_PLOT: &str = "loss_curve_approved.png";
/// Name of the contact sheet a sample step reports (kind [`ArtifactKind::Report`]).
pub const CONTACT_SHEET: &str = "contact_sheet.png";

/// The URI of the report named `name` among `artifacts` (the last one, after retries).
pub fn report_uri<'a>(
    artifacts: impl IntoIterator<Item = &'a Artifact>,
    name: &str,
) -> Option<&'a str> {
    artifacts
        .into_iter()
        .filter(|a| a.kind == ArtifactKind::Report && a.name == name)
        .last()
        .map(|a| a.uri.as_str())
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// Short name, unique within the step (`epoch-3.safetensors`).
    pub name: String,
    /// Where it lives (`file:///...`, `s3://...`).
    pub uri: String,
    pub sha256: Sha256,
    pub size_bytes: u64,
    /// The training epoch it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}

/// What a training run produced at one saved epoch (or at one `save-now`
/// request, which `step` then identifies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochOutput {
    pub epoch: u32,
    /// The LoRA saved at this epoch (absent when a sample step reports samples only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Artifact>,
    /// Mean training loss over the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Loss on held-out images with fixed noise and timesteps per image, so
    /// that epochs compare on the same draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// The optimisation step at which the LoRA was saved; set for every save,
    /// and the only identifier of a `save-now` LoRA between epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
}

impl EpochOutput {
    /// An empty record for `epoch`, to be filled by [`EpochOutput::absorb`].
    pub fn new(epoch: u32) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    /// Folds a later report about the same epoch into this one: what the
    /// later report says wins, samples add up.
    pub fn absorb(&mut self, later: EpochOutput) {
        if later.lora.is_some() {
            self.lora = later.lora;
        }
        if later.loss.is_some() {
            self.loss = later.loss;
        }
        if later.validation_loss.is_some() {
            self.validation_loss = later.validation_loss;
        }
        if later.step.is_some() {
            self.step = later.step;
        }
        self.samples.extend(later.samples);
    }
}
