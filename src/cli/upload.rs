//! `loraflow submit --dataset <folder>`: the folder goes to the caller's own
//! namespace, `datasets/<tenant>/<sha256 of its manifest>/`. By default it
//! travels through the server (`ArtifactService`: chunked, resumable,
//! digest-checked; files the server already holds are skipped), so the
//! client needs no access to the artifact store; with `--artifacts` it is
//! written into the store directly. The tenant comes from the server
//! (`GetServiceStatus`, from the caller's token), never from a flag. The
//! upload happens only after the server has checked the whole request
//! (`validate_only`), so a refused submit uploads nothing.

use std::path::Path;

use anyhow::{Context, bail};
use loraflow::executors::worker::{TransferClient, UploadTarget};
use loraflow::executors::{ArtifactStore, LocalDataset};
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{Client, status_error};

/// How the folder is stored.
enum Route {
    /// Into the artifact store, which this machine can reach.
    Store(ArtifactStore),
    /// Through the server.
    Server(TransferClient),
}

/// A local folder to upload once the request is known to be accepted.
pub struct PendingUpload {
    folder: String,
    tenant: String,
    uri: String,
    route: Route,
    dataset: LocalDataset,
}

/// The dataset URI a job names: a URI as given, or, for a local folder,
/// its URI in the caller's namespace (with the upload still to do).
/// `artifacts` set: write into that store directly; unset: through the
/// server at `conn`.
pub async fn dataset_ref(
    client: &mut Client,
    dataset: &str,
    artifacts: Option<&str>,
    s3: &super::s3_args::S3Args,
    conn: &Connection,
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
    let (uri, route) = match artifacts {
        Some(root) => {
            let store = s3.open(root)?;
            let uri = store.dataset_uri(&status.tenant, &dataset_files);
            if !status.dataset_root.is_empty() && !uri.starts_with(&status.dataset_root) {
                bail!(
                    "the artifact store {} is not the server's: the server keeps tenant {}'s uploads at {}; set --artifacts (or LORAFLOW_ARTIFACTS) to the server's artifact root, or leave it unset to upload through the server",
                    store.root(),
                    status.tenant,
                    status.dataset_root
                );
            }
            (uri, Route::Store(store))
        }
        None => {
            if status.dataset_root.is_empty() {
                bail!(
                    "the server did not say where tenant {}'s uploads go; upload the folder yourself and pass its URI with --dataset",
                    status.tenant
                );
            }
            let transfers =
                TransferClient::connect(&conn.server, conn.token.as_deref().unwrap_or_default())?;
            let uri = format!(
                "{}/{}/",
                status.dataset_root.trim_end_matches('/'),
                dataset_files.manifest_sha256
            );
            (uri, Route::Server(transfers))
        }
    };
    Ok((
        uri.clone(),
        Some(PendingUpload {
            folder: dataset.to_owned(),
            tenant: status.tenant,
            uri,
            route,
            dataset: dataset_files,
        }),
    ))
}

impl PendingUpload {
    /// Store the folder; says on stderr whether anything was uploaded.
    pub async fn upload(self) -> anyhow::Result<()> {
        let uploaded = match &self.route {
            Route::Store(store) => {
                store
                    .upload_dataset(&self.tenant, &self.dataset)
                    .await
                    .with_context(|| format!("uploading {}", self.folder))?
                    .uploaded
            }
            Route::Server(client) => self
                .through_server(client)
                .await
                .with_context(|| format!("uploading {} through the server", self.folder))?,
        };
        if uploaded == 0 {
            eprintln!(
                "the dataset {} is already stored at {}; nothing uploaded",
                self.folder, self.uri
            );
        } else {
            eprintln!(
                "uploaded {uploaded} of {} files ({} bytes in all) from {} to {}",
                self.dataset.files.len(),
                self.dataset.total_bytes(),
                self.folder,
                self.uri
            );
        }
        Ok(())
    }

    /// Announce the files, upload those the server lacks, commit.
    async fn through_server(&self, client: &TransferClient) -> anyhow::Result<usize> {
        let files = self
            .dataset
            .files
            .iter()
            .map(|f| pb::RemoteFile {
                name: f.name.clone(),
                size_bytes: f.size,
                sha256: f.sha256.0.clone(),
                uri: String::new(),
            })
            .collect();
        let start = client.start_dataset(files).await?;
        if start.dataset_uri != self.uri {
            bail!(
                "the server stores this dataset at {}, not at {} as it announced; is the server's artifact root changing?",
                start.dataset_uri,
                self.uri
            );
        }
        if start.dataset_upload_id.is_empty() {
            return Ok(0);
        }
        for name in &start.missing {
            let Some(file) = self.dataset.files.iter().find(|f| &f.name == name) else {
                bail!("the server asked for {name:?}, which is not in the folder");
            };
            let target = UploadTarget::DatasetFile(pb::DatasetFileTarget {
                dataset_upload_id: start.dataset_upload_id.clone(),
                name: name.clone(),
            });
            client
                .upload(target, &file.path, file.size, &file.sha256)
                .await?;
        }
        let done = client.commit_dataset(&start.dataset_upload_id).await?;
        Ok(done.stored as usize)
    }
}
