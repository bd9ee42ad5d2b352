//! The client of a server's `ArtifactService`: resumable uploads and
//! downloads in chunks, checked by SHA-256, in bounded memory. After a
//! dropped connection an upload asks the server how many bytes it holds and
//! sends the rest; a download asks for the bytes after those it has.
//! `loraflow worker` moves a step's files with it ([`RemoteArtifacts`](super::RemoteArtifacts)),
//! `loraflow submit` a dataset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use loraflow_core::artifact::Sha256;
use loraflow_core::executor::ArtifactError;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::artifact_service_client::ArtifactServiceClient;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::grpc::ConnectError;
use crate::artifact_stream::{CHUNK_BYTES, digest_file};

/// How a client retries a transfer whose connection failed.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries of one transfer before giving up (resumed ones included).
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// A client of `ArtifactService`; cheap to clone.
#[derive(Debug, Clone)]
pub struct TransferClient {
    client: ArtifactServiceClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    retry: RetryPolicy,
}

/// What an upload writes: a step's output or a dataset's file.
pub type UploadTarget = pb::start_upload_request::Target;

/// Whether a failed call may succeed when made again (resuming).
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::FailedPrecondition
            | Code::ResourceExhausted
    )
}

fn to_artifact_error(uri: &str, status: Status) -> ArtifactError {
    match status.code() {
        Code::NotFound => ArtifactError::NotFound { uri: uri.into() },
        Code::PermissionDenied | Code::InvalidArgument | Code::Unauthenticated => {
            ArtifactError::Unsupported {
                uri: uri.into(),
                hint: format!("the server refused it: {}", status.message()),
            }
        }
        _ => ArtifactError::Io {
            uri: uri.into(),
            message: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

fn local_err(path: &Path, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io {
        uri: path.display().to_string(),
        message: e.to_string(),
    }
}

impl TransferClient {
    /// A client for the server at `url`, authenticating with `token` (a
    /// tenant's or an executor's). Connects lazily and again after failures.
    pub fn connect(url: &str, token: &str) -> Result<Self, ConnectError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ConnectError::Url {
                url: url.into(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let token = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Token)?;
        let limit = CHUNK_BYTES + 64 * 1024;
        Ok(Self {
            client: ArtifactServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            token,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    async fn backoff(&self, try_no: u32) {
        let d = self
            .retry
            .first_backoff
            .saturating_mul(1 << try_no.min(10))
            .min(self.retry.max_backoff);
        tokio::time::sleep(d).await;
    }

    /// Upload the local file `local` (of `size` bytes and digest `sha256`)
    /// to `target`; answers the stored URI. A dropped connection is resumed
    /// from the offset the server has committed.
    pub async fn upload(
        &self,
        target: UploadTarget,
        local: &Path,
        size: u64,
        sha256: &Sha256,
    ) -> Result<String, ArtifactError> {
        let shown = local.display().to_string();
        let mut upload_id = String::new();
        let mut last: Option<Status> = None;
        for try_no in 0..self.retry.attempts {
            if try_no > 0 {
                self.backoff(try_no).await;
            }
            let start = pb::StartUploadRequest {
                target: Some(target.clone()),
                size_bytes: size,
                sha256: sha256.0.clone(),
                upload_id: upload_id.clone(),
            };
            let started = match self.client.clone().start_upload(self.request(start)).await {
                Ok(r) => r.into_inner(),
                // The session expired (or the server restarted): start over.
                Err(s) if s.code() == Code::NotFound && !upload_id.is_empty() => {
                    upload_id.clear();
                    last = Some(s);
                    continue;
                }
                Err(s) if transient(&s) => {
                    last = Some(s);
                    continue;
                }
                Err(s) => return Err(to_artifact_error(&shown, s)),
            };
            upload_id = started.upload_id.clone();
            if !started.uri.is_empty() {
                return Ok(started.uri);
            }
            let chunk = (started.max_chunk_bytes as usize).clamp(1, CHUNK_BYTES);
            let body = chunks(
                local.to_owned(),
                upload_id.clone(),
                started.committed_offset,
                chunk,
            )
            .await
            .map_err(|e| local_err(local, e))?;
            match self.client.clone().upload(self.request(body)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if !r.uri.is_empty() {
                        return Ok(r.uri);
                    }
                    // The stream ended early (the file shrank?): ask again.
                    last = Some(Status::aborted(format!(
                        "the server holds {} of {size} bytes",
                        r.committed_offset
                    )));
                }
                // A digest that does not match will not match again.
                Err(s) if s.code() == Code::DataLoss => {
                    return Err(ArtifactError::Io {
                        uri: shown,
                        message: format!("the server refused the upload: {}", s.message()),
                    });
                }
                Err(s) if s.code() == Code::NotFound => {
                    upload_id.clear();
                    last = Some(s);
                }
                Err(s) if transient(&s) => {
                    tracing::warn!(file = %shown, "upload interrupted, resuming: {}", s.message());
                    last = Some(s);
                }
                Err(s) => return Err(to_artifact_error(&shown, s)),
            }
        }
        Err(ArtifactError::Io {
            uri: shown,
            message: format!(
                "gave up after {} tries: {}",
                self.retry.attempts,
                last.map(|s| s.message().to_owned()).unwrap_or_default()
            ),
        })
    }

    /// Upload a local file to `target`, hashing it first.
    pub async fn upload_file(
        &self,
        target: UploadTarget,
        local: &Path,
    ) -> Result<(String, Sha256, u64), ArtifactError> {
        let (sha, size) = digest_file(local).await?;
        let uri = self.upload(target, local, size, &sha).await?;
        Ok((uri, sha, size))
    }

    /// Download `uri` to `dest`, resuming after dropped connections, and
    /// verify the whole file's SHA-256 (against `expected` when given, else
    /// against the server's). `lease` names the step an executor acts for,
    /// or (lease id empty) the job a tenant reads.
    pub async fn download(
        &self,
        uri: &str,
        lease: pb::StepLeaseRef,
        dest: &Path,
        expected: Option<&Sha256>,
    ) -> Result<(), ArtifactError> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| local_err(parent, e))?;
        }
        let part = part_path(dest);
        let _ = tokio::fs::remove_file(&part).await;
        let mut last: Option<Status> = None;
        let mut announced: Option<Sha256> = None;
        for try_no in 0..self.retry.attempts {
            if try_no > 0 {
                self.backoff(try_no).await;
            }
            let have = match tokio::fs::metadata(&part).await {
                Ok(m) => m.len(),
                Err(_) => 0,
            };
            let req = pb::DownloadRequest {
                uri: uri.to_owned(),
                offset: have,
                lease: Some(lease.clone()),
            };
            let mut stream = match self.client.clone().download(self.request(req)).await {
                Ok(r) => r.into_inner(),
                Err(s) if transient(&s) => {
                    last = Some(s);
                    continue;
                }
                Err(s) => return Err(to_artifact_error(uri, s)),
            };
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .await
                .map_err(|e| local_err(&part, e))?;
            let mut size = None;
            let mut failed = None;
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(chunk) => {
                        if size.is_none() {
                            size = Some(chunk.size_bytes);
                            if !chunk.sha256.is_empty() {
                                announced = Some(Sha256(chunk.sha256.clone()));
                            }
                        }
                        if !chunk.data.is_empty() {
                            file.write_all(&chunk.data)
                                .await
                                .map_err(|e| local_err(&part, e))?;
                        }
                    }
                    Err(s) => {
                        failed = Some(s);
                        break;
                    }
                }
            }
            file.flush().await.map_err(|e| local_err(&part, e))?;
            drop(file);
            match failed {
                Some(s) if transient(&s) => {
                    tracing::warn!(%uri, "download interrupted, resuming: {}", s.message());
                    last = Some(s);
                    continue;
                }
                Some(s) => return Err(to_artifact_error(uri, s)),
                None => {}
            }
            let (actual, got) = digest_file(&part).await?;
            let want = expected.cloned().or(announced.clone());
            if Some(got) != size || want.as_ref().is_some_and(|w| w != &actual) {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(ArtifactError::DigestMismatch {
                    uri: uri.to_owned(),
                    expected: want.unwrap_or_else(|| Sha256(String::new())),
                    actual,
                });
            }
            tokio::fs::rename(&part, dest)
                .await
                .map_err(|e| local_err(dest, e))?;
            return Ok(());
        }
        Err(ArtifactError::Io {
            uri: uri.to_owned(),
            message: format!(
                "gave up after {} tries: {}",
                self.retry.attempts,
                last.map(|s| s.message().to_owned()).unwrap_or_default()
            ),
        })
    }

    /// Retry a unary call while the server is unreachable.
    async fn unary<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, ArtifactError>
    where
        F: FnMut(ArtifactServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = None;
        for try_no in 0..self.retry.attempts {
            if try_no > 0 {
                self.backoff(try_no).await;
            }
            match call(self.client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == Code::Unavailable || s.code() == Code::Unknown => {
                    last = Some(s)
                }
                Err(s) => return Err(to_artifact_error(what, s)),
            }
        }
        Err(ArtifactError::Io {
            uri: what.to_owned(),
            message: format!(
                "the server stayed unreachable: {}",
                last.map(|s| s.message().to_owned()).unwrap_or_default()
            ),
        })
    }

    /// The files of a step's dataset folder.
    pub async fn list_files(
        &self,
        uri: &str,
        lease: pb::StepLeaseRef,
    ) -> Result<Vec<pb::RemoteFile>, ArtifactError> {
        let req = pb::ListFilesRequest {
            uri: uri.to_owned(),
            lease: Some(lease),
        };
        Ok(self
            .unary(uri, |mut c| {
                let r = self.request(req.clone());
                async move { c.list_files(r).await }
            })
            .await?
            .files)
    }

    /// Announce a dataset's files; the answer names its URI and the files
    /// the server still needs.
    pub async fn start_dataset(
        &self,
        files: Vec<pb::RemoteFile>,
    ) -> Result<pb::StartDatasetResponse, ArtifactError> {
        let req = pb::StartDatasetRequest { files };
        self.unary("dataset", |mut c| {
            let r = self.request(req.clone());
            async move { c.start_dataset(r).await }
        })
        .await
    }

    pub async fn commit_dataset(
        &self,
        dataset_upload_id: &str,
    ) -> Result<pb::CommitDatasetResponse, ArtifactError> {
        let req = pb::CommitDatasetRequest {
            dataset_upload_id: dataset_upload_id.to_owned(),
        };
        self.unary("dataset", |mut c| {
            let r = self.request(req.clone());
            async move { c.commit_dataset(r).await }
        })
        .await
    }

    /// Have the server publish the approved LoRA of a leased publish step.
    pub async fn publish(
        &self,
        lease: pb::StepLeaseRef,
        artifact: pb::Artifact,
    ) -> Result<pb::Artifact, ArtifactError> {
        let uri = artifact.uri.clone();
        let req = pb::PublishArtifactRequest {
            lease: Some(lease),
            artifact: Some(artifact),
        };
        self.unary(&uri, |mut c| {
            let r = self.request(req.clone());
            async move { c.publish_artifact(r).await }
        })
        .await?
        .artifact
        .ok_or_else(|| ArtifactError::Io {
            uri,
            message: "the server answered no published artifact".into(),
        })
    }
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// The chunks of `local` from `offset`, read as the stream is polled: one
/// chunk in memory at a time.
async fn chunks(
    local: PathBuf,
    upload_id: String,
    offset: u64,
    chunk: usize,
) -> std::io::Result<impl futures::Stream<Item = pb::UploadChunk> + Send + 'static> {
    let mut file = tokio::fs::File::open(&local).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok(futures::stream::unfold(
        (file, offset, false),
        move |(mut file, offset, done)| {
            let upload_id = upload_id.clone();
            async move {
                if done {
                    return None;
                }
                let mut buf = vec![0u8; chunk];
                let mut n = 0;
                // Fill the chunk (a read may return less).
                while n < chunk {
                    match file.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            tracing::warn!("reading the file to upload failed: {e}");
                            return None;
                        }
                    }
                }
                if n == 0 {
                    return None;
                }
                buf.truncate(n);
                let last = n < chunk;
                let msg = pb::UploadChunk {
                    upload_id,
                    offset,
                    data: buf,
                };
                Some((msg, (file, offset + n as u64, last)))
            }
        },
    ))
}
