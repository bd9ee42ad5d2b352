//! `POST /v1/datasets`: a dataset uploaded as `multipart/form-data`, one
//! part per file, its `filename` the file's relative name (`/`-separated:
//! `cat/001.png`, `cat/001.txt`). The parts are streamed to a staging
//! folder of this machine as they arrive, each checked against the upload
//! limits before a byte more is kept (files per dataset, bytes per file,
//! name length and shape, the whole body), then stored in the caller's
//! content-addressed namespace. The answer's `uri` is what a job's
//! `dataset.uri` names; the same files uploaded again store nothing.
//!
//! ```sh
//! curl -H "authorization: Bearer $TOKEN" http://127.0.0.1:8080/v1/datasets \
//!     -F 'file=@001.png;filename=001.png' -F 'file=@001.txt;filename=001.txt'
//! ```

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use tokio::io::AsyncWriteExt;

use super::error::{ErrorBody, HttpError};
use super::server::{AppState, Who};
use super::wire;
use crate::api::datasets::store_dataset;

/// A staging folder, removed with whatever it holds when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir()
            .join("loraflow-http-uploads")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> HttpError {
    HttpError::new(tonic::Status::unavailable(format!(
        "{what}: {e}; try again"
    )))
}

/// A part that could not be read: over the body limit (413), or a body
/// that is not well-formed multipart (400, field `body`).
fn part_error(e: MultipartError, limit: usize) -> HttpError {
    if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        HttpError::too_large(limit)
    } else {
        HttpError::field("body", format!("the multipart body could not be read: {e}"))
    }
}

/// Stream the body's parts into `dir`, checking each against the limits.
async fn receive(
    mut parts: Multipart,
    dir: &Path,
    limits: &crate::transfer::TransferLimits,
    body_limit: usize,
) -> Result<usize, HttpError> {
    let mut names = std::collections::BTreeSet::new();
    let mut count = 0usize;
    while let Some(mut part) = parts
        .next_field()
        .await
        .map_err(|e| part_error(e, body_limit))?
    {
        let field = format!("files[{count}]");
        if count == limits.max_dataset_files {
            return Err(HttpError::field(
                &field,
                format!(
                    "more than {} files; a dataset upload holds at most {} (limits: [artifacts.transfer] max_dataset_files)",
                    limits.max_dataset_files, limits.max_dataset_files
                ),
            ));
        }
        let Some(name) = part.file_name().map(str::to_owned) else {
            return Err(HttpError::field(
                &field,
                "each part must be a file whose filename is its relative name (curl: -F 'file=@001.png;filename=001.png')",
            ));
        };
        crate::transfer::check_name(&format!("{field}.filename"), &name, limits.max_name_bytes)
            .map_err(|e| match e {
                crate::transfer::Error::Invalid { field, message } => {
                    HttpError::field(&field, message)
                }
                other => HttpError::field(&format!("{field}.filename"), other.to_string()),
            })?;
        if !names.insert(name.clone()) {
            return Err(HttpError::field(
                &format!("{field}.filename"),
                format!(
                    "{} is sent twice; each file once",
                    loraflow_core::limits::quote(&name)
                ),
            ));
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| unavailable("staging the upload failed", e))?;
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| unavailable("staging the upload failed", e))?;
        let mut size = 0u64;
        while let Some(chunk) = part.chunk().await.map_err(|e| part_error(e, body_limit))? {
            size += chunk.len() as u64;
            if size > limits.max_file_bytes {
                return Err(HttpError::field(
                    &format!("{field}.size_bytes"),
                    format!(
                        "{} is over the limit of {} bytes per file (limits: [artifacts.transfer] max_file_bytes)",
                        loraflow_core::limits::quote(&name),
                        limits.max_file_bytes
                    ),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| unavailable("staging the upload failed", e))?;
        }
        file.flush()
            .await
            .map_err(|e| unavailable("staging the upload failed", e))?;
        count += 1;
    }
    if count == 0 {
        return Err(HttpError::field(
            "files",
            "required; send at least one file as a multipart part",
        ));
    }
    Ok(count)
}

#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content_type = "multipart/form-data",
        description = "One part per file; each part's filename is the file's relative name (`/`-separated)."),
    responses((status = 200, body = wire::Dataset), (status = "default", body = ErrorBody)))]
pub async fn upload_dataset(
    State(s): State<AppState>,
    who: Who,
    parts: Result<Multipart, MultipartRejection>,
) -> Result<Json<wire::Dataset>, HttpError> {
    let parts = parts.map_err(|e| {
        HttpError::field(
            "content-type",
            format!("the body must be multipart/form-data, one part per file: {e}"),
        )
    })?;
    let staging = Staging::new().map_err(|e| unavailable("staging the upload failed", e))?;
    receive(
        parts,
        &staging.0,
        &s.options.uploads,
        s.options.max_upload_bytes,
    )
    .await?;
    let stored = store_dataset(&s.engine, &who.0, &staging.0).await?;
    Ok(Json(wire::Dataset {
        uri: stored.uri,
        manifest_sha256: stored.manifest_sha256,
        files: stored.files,
        bytes: stored.bytes,
        uploaded: stored.uploaded,
    }))
}
