//! Datasets uploaded whole by a front-end (`POST /v1/datasets`): the files,
//! already checked against the upload limits and staged in a local folder,
//! are stored in the caller's content-addressed namespace
//! (`datasets/<tenant>/<manifest sha256>/`, the layout `loraflow upload` and
//! `ArtifactService` use), and the folder's URI is what a job names.

use std::path::Path;

use loraflow_core::executor::ArtifactError;
use loraflow_executors::dataset_upload::LocalDataset;
use tracing::Instrument;

use super::{ApiError, Requester};
use crate::engine::Engine;

/// A dataset stored for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    /// What a job's `dataset.uri` names.
    pub uri: String,
    /// The SHA-256 of the dataset's manifest: its folder's name.
    pub manifest_sha256: String,
    pub files: usize,
    pub bytes: u64,
    /// Files written; 0 when the same dataset was stored before.
    pub uploaded: usize,
}

/// Store the files staged under `dir` in the caller's namespace. The tenant
/// is always the caller's: no request names it.
pub async fn store_dataset(
    engine: &Engine,
    who: &Requester,
    dir: &Path,
) -> Result<StoredDataset, ApiError> {
    async {
        let dataset = {
            let dir = dir.to_owned();
            // Hashing reads every byte: off the async threads.
            let shown = dir.display().to_string();
            tokio::task::spawn_blocking(move || LocalDataset::read(&dir))
                .await
                .unwrap_or_else(|e| {
                    Err(ArtifactError::Io {
                        uri: shown,
                        message: format!("hashing the upload stopped: {e}"),
                    })
                })
                .map_err(crate::Error::from)?
        };
        let stored = engine
            .artifacts()
            .upload_dataset(who.tenant.as_str(), &dataset)
            .await
            .map_err(crate::Error::from)?;
        tracing::info!(uri = %stored.uri, files = dataset.files.len(), uploaded = stored.uploaded, "dataset stored");
        Ok::<_, ApiError>(StoredDataset {
            uri: stored.uri,
            manifest_sha256: dataset.manifest_sha256.to_string(),
            files: dataset.files.len(),
            bytes: dataset.total_bytes(),
            uploaded: stored.uploaded,
        })
    }
    .instrument(who.span_tenant("UploadDataset"))
    .await
}
