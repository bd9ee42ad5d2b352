//! `loraflow submit --dataset <folder>`: the folder goes to the caller's own
//! namespace in the artifact store, `datasets/<tenant>/<sha256 of its
//! manifest>/`. The tenant comes from the server (`GetServiceStatus`, from
//! the caller's token), never from a flag. The upload happens only after
//! the server has checked the whole request (`validate_only`), so a refused
//! submit uploads nothing; a folder already stored is not uploaded again.

use std::path::Path;

use anyhow::{Context, bail};
use loraflow::executors::{ArtifactStore, LocalDataset};
use loraflow_proto::pb::v1 as pb;

use super::client::{Client, status_error};

/// A local folder to upload once the request is known to be accepted.
pub struct PendingUpload {
    folder: String,
    tenant: String,
    store: ArtifactStore,
    dataset: LocalDataset,
}

/// The dataset URI a job names: a URI as given, or, for a local folder,
/// its URI in the caller's namespace (with the upload still to do).
pub async fn dataset_ref(
    client: &mut Client,
    dataset: &str,
    artifacts: &str,
) -> anyhow::Result<(String, Option<PendingUpload>)> {
    let path = Path::new(dataset);
    if dataset.contains("://") {
        return Ok((dataset.to_owned(), None));
    }
    if !path.exists() {
        bail!("dataset {dataset:?} is neither an existing folder nor a URI");
    }
    if !path.is_dir() {
        bail!("dataset {dataset:?} must be a folder of images and captions");
    }
    let status = client
        .get_service_status(pb::GetServiceStatusRequest::default())
        .await
        .map_err(|s| status_error("cannot ask the server who this token is", s))?
        .into_inner();
    if status.tenant.is_empty() {
        bail!(
            "the server did not say which tenant this token belongs to (an older server?); upload the folder yourself and pass its URI with --dataset"
        );
    }
    let local = path.to_owned();
    let dataset_files = tokio::task::spawn_blocking(move || LocalDataset::read(&local))
        .await
        .context("reading the dataset folder")??;
    let store = ArtifactStore::open(artifacts)?;
    let uri = store.dataset_uri(&status.tenant, &dataset_files);
    if !status.dataset_root.is_empty() && !uri.starts_with(&status.dataset_root) {
        bail!(
            "the artifact store {} is not the server's: the server keeps tenant {}'s uploads at {}; set --artifacts (or LORAFLOW_ARTIFACTS) to the server's artifact root",
            store.root(),
            status.tenant,
            status.dataset_root
        );
    }
    Ok((
        uri,
        Some(PendingUpload {
            folder: dataset.to_owned(),
            tenant: status.tenant,
            store,
            dataset: dataset_files,
        }),
    ))
}

impl PendingUpload {
    /// Store the folder (staged, then moved into place); says on stderr
    /// whether anything was uploaded.
    pub async fn upload(self) -> anyhow::Result<()> {
        let done = self
            .store
            .upload_dataset(&self.tenant, &self.dataset)
            .await
            .with_context(|| format!("uploading {}", self.folder))?;
        if done.uploaded == 0 {
            eprintln!(
                "the dataset {} is already stored at {}; nothing uploaded",
                self.folder, done.uri
            );
        } else {
            eprintln!(
                "uploaded {} files ({} bytes) from {} to {}",
                done.uploaded,
                self.dataset.total_bytes(),
                self.folder,
                done.uri
            );
        }
        Ok(())
    }
}
