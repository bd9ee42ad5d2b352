//! Artifact I/O as executors see it. Implementations (local filesystem, S3
//! through `object_store`) live outside the core.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::artifact::{Artifact, ArtifactKind, Sha256};

/// Why an artifact could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// Nothing at that location. The step should fail with `InvalidInput`.
    #[error("no artifact at {uri}")]
    NotFound { uri: String },
    /// The bytes are not the ones recorded. Never use them; fail the step.
    #[error("artifact {uri} has sha256 {actual}, expected {expected}")]
    DigestMismatch {
        uri: String,
        expected: Sha256,
        actual: Sha256,
    },
    /// The URI's scheme is not served by this store.
    #[error("unsupported artifact location {uri:?}: {hint}")]
    Unsupported { uri: String, hint: String },
    /// Storage or local file I/O failed; retrying may help.
    #[error("artifact I/O failed for {uri}: {message}")]
    Io { uri: String, message: String },
}

/// Reading and writing a job's files.
#[async_trait]
pub trait ArtifactIo: Send + Sync + std::fmt::Debug {
    /// Upload a local file as an artifact of the running step; returns its
    /// reference with URI, digest and size.
    async fn put(
        &self,
        local: &Path,
        name: &str,
        kind: ArtifactKind,
        epoch: Option<u32>,
    ) -> Result<Artifact, ArtifactError>;

    /// Download an artifact to `dest`, verifying its digest.
    async fn fetch(&self, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError>;

    /// Download every file under `uri` (a dataset folder) into `dest`;
    /// returns the local paths, sorted.
    async fn fetch_dir(&self, uri: &str, dest: &Path) -> Result<Vec<PathBuf>, ArtifactError>;

    /// Copy an artifact to a permanent location, verify the copy's digest,
    /// and return the new reference (kind `Published`).
    async fn publish(&self, artifact: &Artifact, dest_uri: &str)
    -> Result<Artifact, ArtifactError>;
}
