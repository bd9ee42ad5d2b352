//! Artifacts: files a step produced (LoRA weights, samples, manifests). The event
//! log holds their URI and digest, never the bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A SHA-256 digest, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
    /// Saved (or sampled) on a `save-now`/`sample-now` request between
    /// epochs rather than at an epoch's end: `step` identifies it, and
    /// `epoch` is the epoch in progress.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
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
        self.requested |= later.requested;
        // A sample reported while training ran is reported again at the
        // step's completion: the same file counts once.
        for sample in later.samples {
            if !self.samples.iter().any(|s| s.uri == sample.uri) {
                self.samples.push(sample);
            }
        }
    }
}

/// A job's reviewable outputs: one entry per saved epoch, keyed by epoch,
/// and one per `save-now`/`sample-now` request, keyed by its step. The
/// aggregate and the `JobStatus` view fold reports into it the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reviewables {
    /// Saved at an epoch's end.
    pub epochs: BTreeMap<u32, EpochOutput>,
    /// Saved or sampled on request between epochs, by optimisation step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requested: BTreeMap<u64, EpochOutput>,
}

impl Reviewables {
    /// Folds one report in: a requested one (with its step) under its step,
    /// any other under its epoch.
    pub fn absorb(&mut self, out: EpochOutput) {
        absorb_into(&mut self.epochs, &mut self.requested, out);
    }

    /// Every entry in training order: by epoch, and within an epoch the
    /// requested saves (made while it ran) before the epoch's own.
    pub fn in_order(&self) -> Vec<&EpochOutput> {
        let mut all: Vec<&EpochOutput> = self
            .epochs
            .values()
            .chain(self.requested.values())
            .collect();
        all.sort_by_key(|e| (e.epoch, !e.requested, e.step));
        all
    }

    /// The entries a reviewer can approve: those with a LoRA.
    pub fn with_lora(&self) -> Vec<&EpochOutput> {
        self.in_order()
            .into_iter()
            .filter(|e| e.lora.is_some())
            .collect()
    }

    /// The entry whose LoRA was saved at optimisation step `step` (a
    /// requested save, or an epoch's whose report named its step).
    pub fn at_step(&self, step: u64) -> Option<&EpochOutput> {
        self.requested
            .get(&step)
            .filter(|e| e.lora.is_some())
            .or_else(|| {
                self.epochs
                    .values()
                    .find(|e| e.step == Some(step) && e.lora.is_some())
            })
    }

    /// The epoch to suggest to a reviewer, if any epoch has a LoRA.
    pub fn suggestion(&self) -> Option<Suggestion> {
        Suggestion::among(self.epochs.values())
    }
}

/// [`Reviewables::absorb`] over separately held maps (the `JobStatus`
/// view keeps them as two fields).
pub fn absorb_into(
    epochs: &mut BTreeMap<u32, EpochOutput>,
    requested: &mut BTreeMap<u64, EpochOutput>,
    out: EpochOutput,
) {
    match (out.requested, out.step) {
        (true, Some(step)) => requested
            .entry(step)
            .or_insert_with(|| EpochOutput {
                requested: true,
                step: Some(step),
                ..EpochOutput::new(out.epoch)
            })
            .absorb(out),
        _ => epochs
            .entry(out.epoch)
            .or_insert_with(|| EpochOutput::new(out.epoch))
            .absorb(out),
    }
}

/// Which loss a [`Suggestion`] rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SuggestionBasis {
    /// The loss on held-out images (comparable across epochs).
    ValidationLoss,
    /// The mean training loss (no epoch has a validation loss).
    TrainingLoss,
    /// No epoch has a loss: the last saved epoch.
    LastEpoch,
}

/// The epoch a reviewer is pointed at, and why: the lowest validation
/// loss, else the lowest training loss, else the last saved epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Suggestion {
    pub epoch: u32,
    pub basis: SuggestionBasis,
    /// The loss it was chosen by (none for [`SuggestionBasis::LastEpoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Saved epochs it was chosen among.
    pub among: usize,
}

impl Suggestion {
    /// The suggestion among `epochs` (those with a LoRA count); `None`
    /// when none has a LoRA. Ties go to the earlier epoch.
    pub fn among<'a>(epochs: impl IntoIterator<Item = &'a EpochOutput>) -> Option<Self> {
        let saved: Vec<&EpochOutput> = epochs.into_iter().filter(|e| e.lora.is_some()).collect();
        let lowest = |loss: fn(&EpochOutput) -> Option<f64>| {
            saved
                .iter()
                .filter_map(|e| loss(e).filter(|l| l.is_finite()).map(|l| (e.epoch, l)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        };
        let (epoch, basis, loss) = if let Some((e, l)) = lowest(|e| e.validation_loss) {
            (e, SuggestionBasis::ValidationLoss, Some(l))
        } else if let Some((e, l)) = lowest(|e| e.loss) {
            (e, SuggestionBasis::TrainingLoss, Some(l))
        } else {
            let last = saved.iter().map(|e| e.epoch).max()?;
            (last, SuggestionBasis::LastEpoch, None)
        };
        Some(Self {
            epoch,
            basis,
            loss,
            among: saved.len(),
        })
    }

    /// Why, in a reviewer's words: `epoch 4: lowest validation loss 0.113
    /// of 5 saved epochs`.
    pub fn reason(&self) -> String {
        let of = format!(
            "of {} saved epoch{}",
            self.among,
            if self.among == 1 { "" } else { "s" }
        );
        match (self.basis, self.loss) {
            (SuggestionBasis::ValidationLoss, Some(l)) => {
                format!("epoch {}: lowest validation loss {l:.3} {of}", self.epoch)
            }
            (SuggestionBasis::TrainingLoss, Some(l)) => format!(
                "epoch {}: lowest training loss {l:.3} {of} (no validation loss was recorded)",
                self.epoch
            ),
            _ => format!("epoch {}: the last {of} (no loss was recorded)", self.epoch),
        }
    }
}
