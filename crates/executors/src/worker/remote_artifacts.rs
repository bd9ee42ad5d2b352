//! [`RemoteArtifacts`]: a step's artifact I/O through the server's
//! `ArtifactService`, so a worker needs no access to the artifact store:
//! only the server's address and its executor token. Every call quotes the
//! step's lease; the server lets it read only that step's dataset and
//! inputs and write only under the step's own folder.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use loraflow_core::artifact::{Artifact, ArtifactKind};
use loraflow_core::executor::{ArtifactError, ArtifactIo, StepAssignment};
use loraflow_proto::pb::v1 as pb;

use super::transfer::TransferClient;

/// The artifact I/O of one leased step attempt, through the server.
#[derive(Debug, Clone)]
pub struct RemoteArtifacts {
    client: TransferClient,
    lease: pb::StepLeaseRef,
}

impl RemoteArtifacts {
    /// The I/O of `step`, acting under its lease.
    pub fn for_step(client: TransferClient, step: &StepAssignment) -> Self {
        Self {
            client,
            lease: pb::StepLeaseRef {
                job_id: step.job_id.to_string(),
                lease_id: step.lease_id.to_string(),
            },
        }
    }
}

#[async_trait]
impl ArtifactIo for RemoteArtifacts {
    async fn put(
        &self,
        local: &Path,
        name: &str,
        kind: ArtifactKind,
        epoch: Option<u32>,
    ) -> Result<Artifact, ArtifactError> {
        let target = pb::start_upload_request::Target::StepOutput(pb::StepOutputTarget {
            lease: Some(self.lease.clone()),
            name: name.to_owned(),
        });
        let (uri, sha256, size_bytes) = self.client.upload_file(target, local).await?;
        Ok(Artifact {
            kind,
            name: name.to_owned(),
            uri,
            sha256,
            size_bytes,
            epoch,
        })
    }

    async fn fetch(&self, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        self.client
            .download(
                &artifact.uri,
                self.lease.clone(),
                dest,
                Some(&artifact.sha256),
            )
            .await
    }

    async fn fetch_dir(&self, uri: &str, dest: &Path) -> Result<Vec<PathBuf>, ArtifactError> {
        let files = self.client.list_files(uri, self.lease.clone()).await?;
        if files.is_empty() {
            return Err(ArtifactError::NotFound { uri: uri.into() });
        }
        let mut paths = Vec::with_capacity(files.len());
        for f in files {
            let mut local = dest.to_path_buf();
            for part in f.name.split('/') {
                // The server checks names; a worker does not trust it blindly.
                if part.is_empty() || part == "." || part == ".." {
                    return Err(ArtifactError::Unsupported {
                        uri: f.uri.clone(),
                        hint: format!("the server listed a bad file name {:?}", f.name),
                    });
                }
                local.push(part);
            }
            let sha = loraflow_proto::convert::artifact::sha256(&f.sha256).map_err(|v| {
                ArtifactError::Io {
                    uri: f.uri.clone(),
                    message: format!("the server listed a bad digest: {v}"),
                }
            })?;
            self.client
                .download(&f.uri, self.lease.clone(), &local, Some(&sha))
                .await?;
            paths.push(local);
        }
        paths.sort();
        Ok(paths)
    }

    /// The server decides where a published LoRA goes (its publish root);
    /// `_dest_uri`, computed from the worker's own settings, is not used.
    async fn publish(
        &self,
        artifact: &Artifact,
        _dest_uri: &str,
    ) -> Result<Artifact, ArtifactError> {
        let published = self
            .client
            .publish(self.lease.clone(), artifact.clone().into())
            .await?;
        Artifact::try_from(published).map_err(|v| ArtifactError::Io {
            uri: artifact.uri.clone(),
            message: format!("the server answered a bad artifact: {v}"),
        })
    }
}
