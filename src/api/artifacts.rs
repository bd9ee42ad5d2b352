//! One artifact of a tenant's job (a sample, a report image, a LoRA), by
//! digest: what the console shows. Larger files go through
//! `ArtifactService` (`loraflow download`).

use bytes::Bytes;
use loraflow_core::artifact::Artifact;
use loraflow_core::validation::Violations;
use tracing::Instrument;

use super::{ApiError, Requester};
use crate::engine::Engine;

/// The largest artifact answered in one piece.
pub const MAX_INLINE_BYTES: u64 = 64 * 1024 * 1024;

/// Every artifact a job's status names.
fn artifacts_of(status: &loraflow_core::views::JobStatus) -> impl Iterator<Item = &Artifact> {
    status
        .epochs
        .values()
        .flat_map(|e| e.lora.iter().chain(e.samples.iter()))
        .chain(status.artifacts.iter())
        .chain(status.published.iter())
}

/// The artifact of `job_id` whose SHA-256 is `sha256`, and its bytes
/// (digest-checked).
pub async fn job_artifact(
    engine: &Engine,
    who: &Requester,
    job_id: &str,
    sha256: &str,
) -> Result<(Artifact, Bytes), ApiError> {
    let id = loraflow_proto::aip::job_id(job_id).map_err(|v| ApiError::from(v.nested("job_id")))?;
    async {
        let view = engine.get_job(&who.tenant, &id).await?;
        let Some(artifact) = artifacts_of(&view.status)
            .find(|a| a.sha256.0 == sha256)
            .cloned()
        else {
            let mut v = Violations::default();
            v.push(
                "sha256",
                format!("job {id} has no artifact with digest {sha256:?}"),
            );
            return Err(crate::Error::InvalidArgument(v).into());
        };
        if artifact.size_bytes > MAX_INLINE_BYTES {
            let mut v = Violations::default();
            v.push(
                "sha256",
                format!(
                    "{} is {} bytes, above {MAX_INLINE_BYTES}; download it with `loraflow download`",
                    artifact.name, artifact.size_bytes
                ),
            );
            return Err(crate::Error::InvalidArgument(v).into());
        }
        let bytes = engine
            .artifacts()
            .get_verified(&artifact)
            .await
            .map_err(crate::Error::from)?;
        Ok::<_, ApiError>((artifact, bytes))
    }
    .instrument(who.span("GetArtifact", Some(id.as_str())))
    .await
}
