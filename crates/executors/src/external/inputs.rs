//! Fetching a `train` step's inputs into its scratch folder: the dataset
//! and, when the `label` step ran, its `labels.json`.

use std::path::{Path, PathBuf};

use loraflow_core::artifact::ArtifactKind;
use loraflow_core::executor::{StepAssignment, StepContext};

use super::error::{Error, Result};
use crate::dataset;
use crate::label::Labels;

/// The dataset's root in `work`, its files, and the labels if any.
pub async fn fetch_inputs(
    step: &StepAssignment,
    ctx: &StepContext,
    work: &Path,
) -> Result<(PathBuf, Vec<PathBuf>, Option<Labels>)> {
    let root = work.join("dataset");
    let files = ctx.artifacts().fetch_dir(&step.dataset.uri, &root).await?;
    let labels = match step.input(ArtifactKind::Labels) {
        Some(artifact) => {
            let local = work.join(dataset::LABELS_FILE);
            ctx.artifacts().fetch(artifact, &local).await?;
            let bytes = tokio::fs::read(&local)
                .await
                .map_err(|e| Error::io(format!("reading {}", local.display()), e))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                Error::Dataset(format!("{} is not a valid labels file: {e}", artifact.uri))
            })?)
        }
        None => None,
    };
    Ok((root, files, labels))
}

/// The job's sample settings for an external engine: its `sample_*` parameters (the catalogue's
/// defaults for jobs created before them), and default prompts from its trigger word and the
/// labels' captions when it gave none.
pub fn sample_settings(
    step: &StepAssignment,
    labels: Option<&Labels>,
) -> loraflow_core::sampling::SampleSettings {
    use loraflow_core::sampling::SampleSettings;
    let trigger = step
        .params
        .get(loraflow_core::limits::TRIGGER_WORD_PARAM)
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let captions = labels
        .into_iter()
        .flat_map(|l| l.images.values().map(|label| label.caption.as_str()));
    SampleSettings::of(
        &step.params,
        &step.sample_prompts,
        &SampleSettings::default(),
    )
    .or_default_prompts(trigger, captions)
}
