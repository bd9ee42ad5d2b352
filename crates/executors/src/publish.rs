//! `publish`: copy the approved epoch's LoRA to its permanent location and
//! verify the copy's digest. When training left a loss history (the native
//! engine does), the loss plot is drawn again with the approved epoch
//! highlighted (`loss_curve_approved.png`).

use async_trait::async_trait;
use loraflow_core::artifact::ArtifactKind;
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::StepError;
use loraflow_core::workflow::StepKind;

use crate::util::{from_artifact, invalid_input};

/// The `publish` executor. Published files go to
/// `<destination>/<subject>/<version>/<job>/<subject>-<version>.safetensors`.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Root URL of permanent storage (`file:///srv/loras`, `s3://bucket/loras`).
    pub destination: String,
}

/// Names are used in paths: keep them to safe characters, and short (see
/// [`MAX_NAME_BYTES`](crate::kohya::layout::MAX_NAME_BYTES)).
fn path_safe(s: &str) -> String {
    let safe: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    crate::kohya::layout::fit_file_name(&safe)
}

impl Publish {
    pub fn destination_for(&self, step: &StepAssignment) -> String {
        let (subject, version) = (
            path_safe(&step.naming.subject),
            path_safe(&step.naming.version),
        );
        format!(
            "{}/{subject}/{version}/{}/{subject}-{version}.safetensors",
            self.destination.trim_end_matches('/'),
            path_safe(step.job_id.as_str())
        )
    }
}

#[async_trait]
impl Executor for Publish {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::PUBLISH.into()]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let epoch = step
            .approved_epoch
            .ok_or_else(|| invalid_input("nothing to publish: no epoch was approved"))?;
        let lora = step.approved_lora().cloned().ok_or_else(|| {
            invalid_input(match step.approved_step {
                Some(at) => format!("no LoRA file was saved at the approved step {at}"),
                None => format!("approved epoch {epoch} has no LoRA file"),
            })
        })?;
        let dest = self.destination_for(step);
        let published = ctx
            .artifacts()
            .publish(&lora, &dest)
            .await
            .map_err(from_artifact)?;
        debug_assert_eq!(published.kind, ArtifactKind::Published);
        let mut artifacts = vec![published.clone()];
        // The plot is for people; publishing does not depend on it.
        match approved_plot(step, ctx, epoch).await {
            Ok(Some(plot)) => artifacts.push(plot),
            Ok(None) => {}
            Err(e) => tracing::warn!("the approved loss plot was not drawn: {e}"),
        }
        Ok(StepOutput {
            outputs: serde_json::json!({
                "uri": published.uri,
                "epoch": epoch,
                "step": step.approved_step,
            }),
            artifacts,
            epochs: vec![],
        })
    }
}

/// The loss plot with `epoch` highlighted, drawn from the training step's
/// `loss_history.json` when there is one.
async fn approved_plot(
    step: &StepAssignment,
    ctx: &StepContext,
    epoch: u32,
) -> Result<Option<loraflow_core::artifact::Artifact>, String> {
    let Some(history) = step
        .inputs
        .iter()
        .rfind(|a| a.kind == ArtifactKind::Report && a.name == "loss_history.json")
    else {
        return Ok(None);
    };
    let local = ctx.workdir().join("loss_history.json");
    ctx.artifacts()
        .fetch(history, &local)
        .await
        .map_err(|e| e.to_string())?;
    let out = ctx
        .workdir()
        .join(loraflow_core::artifact::APPROVED_LOSS_PLOT);
    crate::native::loss_plot::render_approved(&local, epoch as usize, &out)
        .map_err(|e| e.to_string())?;
    ctx.artifacts()
        .put(
            &out,
            loraflow_core::artifact::APPROVED_LOSS_PLOT,
            ArtifactKind::Report,
            None,
        )
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}
