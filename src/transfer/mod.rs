//! The server's side of moving files: resumable, digest-checked uploads
//! into the artifact store, downloads from an offset, dataset uploads into
//! a tenant's content-addressed namespace, and server-side publishing. The
//! gRPC handlers (`grpc/artifacts.rs`) only translate; every rule is here.
//!
//! - `access.rs`: who may read and write what.
//! - `datasets.rs`: content-addressed dataset uploads.
//! - `error.rs`: the typed errors.
//!
//! - `persist.rs`: sessions recorded beside their staged bytes, brought
//!   back after a restart.
//!
//! An upload session stages its bytes in a local file under the staging
//! folder, hashing them as they come; the session (offset and hash state)
//! lives in this process and is recorded beside the staged bytes, so a
//! client whose connection dropped, or whose server restarted, resumes
//! from the committed offset. Only when the last byte is in and the digest and
//! size match is the file stored, with a multipart upload: memory stays
//! bounded on every path.

mod access;
mod datasets;
mod error;
mod persist;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use loraflow_core::artifact::{Artifact, Sha256};
use loraflow_executors::artifact_stream::{CHUNK_BYTES, hex_digest};
use serde::Deserialize;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

pub use access::Who;
pub(crate) use access::check_name;
pub use datasets::{AnnouncedFile, DatasetStart};
pub use error::{Error, Result};

use crate::engine::Engine;

/// Limits of the transfer service (`[artifacts.transfer]` in
/// `loraflow.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferLimits {
    /// The largest file one upload may carry.
    pub max_file_bytes: u64,
    /// Files of one dataset upload.
    pub max_dataset_files: usize,
    /// Bytes of a file's relative name.
    pub max_name_bytes: usize,
    /// Upload sessions open at once, all callers together.
    pub max_sessions: usize,
    /// An upload session idle this long is dropped with its staged bytes.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 30,
            max_dataset_files: 10_000,
            max_name_bytes: 1024,
            max_sessions: 1024,
            session_ttl: Duration::from_secs(3600),
        }
    }
}

/// What the transfer service needs besides the engine.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Where approved LoRAs are published (`[artifacts] publish_root`).
    pub publish_root: String,
    pub limits: TransferLimits,
    /// Where upload sessions stage their bytes and record themselves
    /// (default: `loraflow-uploads` in the system's temporary folder). A
    /// restarted server resumes the sessions it finds here.
    pub staging_dir: Option<PathBuf>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            publish_root: "loraflow-published".into(),
            limits: TransferLimits::default(),
            staging_dir: None,
        }
    }
}

/// What an upload writes, once checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// A file of the step attempt the lease holds.
    StepOutput {
        job_id: String,
        lease_id: String,
        name: String,
    },
    /// One file of a dataset upload session.
    DatasetFile {
        dataset_upload_id: String,
        name: String,
    },
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub upload_id: String,
    pub committed: u64,
    /// Set once the file is stored.
    pub uri: Option<String>,
}

/// A file to download: its size and digest, and its bytes from the
/// requested offset.
pub struct Download {
    pub size: u64,
    pub sha256: Sha256,
    pub chunks: BoxStream<'static, Result<Bytes>>,
}

/// One file of a folder a step may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256,
    pub uri: String,
}

struct Session {
    owner: Who,
    target: Target,
    /// The object the file is stored at.
    dest_uri: String,
    size: u64,
    sha256: Sha256,
    staged: PathBuf,
    file: Option<tokio::fs::File>,
    committed: u64,
    hasher: sha2::Sha256,
    /// The URI once stored.
    stored: Option<String>,
}

struct Slot {
    owner: Who,
    session: Arc<tokio::sync::Mutex<Session>>,
    touched: Instant,
}

/// The transfer service: cheap to clone.
#[derive(Clone)]
pub struct Transfers {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    options: TransferOptions,
    staging: PathBuf,
    sessions: Mutex<HashMap<String, Slot>>,
    datasets: Mutex<HashMap<String, datasets::DatasetSession>>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers")
            .field("staging", &self.inner.staging)
            .field("options", &self.inner.options)
            .finish()
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Transfers {
    pub fn new(engine: Engine, options: TransferOptions) -> Self {
        let staging = options
            .staging_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("loraflow-uploads"));
        Self {
            inner: Arc::new(Inner {
                engine,
                options,
                staging,
                sessions: Mutex::new(HashMap::new()),
                datasets: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn limits(&self) -> &TransferLimits {
        &self.inner.options.limits
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Drop sessions idle past their TTL, with their staged files.
    fn sweep(&self) {
        let ttl = self.limits().session_ttl;
        let mut gone = Vec::new();
        {
            let mut sessions = self.inner.sessions.lock().expect("sessions lock");
            sessions.retain(|id, slot| {
                let keep = slot.touched.elapsed() < ttl;
                if !keep && let Ok(s) = slot.session.try_lock() {
                    gone.push(s.staged.clone());
                    gone.push(persist::upload_record(&self.inner.staging, id));
                }
                keep
            });
            self.inner
                .datasets
                .lock()
                .expect("datasets lock")
                .retain(|id, d| {
                    let keep = d.touched.elapsed() < ttl;
                    if !keep {
                        gone.push(persist::dataset_record(&self.inner.staging, id));
                    }
                    keep
                });
        }
        for path in gone {
            let _ = std::fs::remove_file(path);
        }
    }

    fn ttl_s(&self) -> u64 {
        self.limits().session_ttl.as_secs()
    }

    fn session(&self, who: &Who, id: &str) -> Result<Arc<tokio::sync::Mutex<Session>>> {
        access::check_id("upload_id", id)?;
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        let unknown = || Error::UnknownSession {
            id: id.to_owned(),
            ttl_s: self.ttl_s(),
        };
        let slot = sessions.get_mut(id).ok_or_else(unknown)?;
        if &slot.owner != who {
            return Err(Error::Denied(format!(
                "upload {id} belongs to another caller"
            )));
        }
        slot.touched = Instant::now();
        Ok(slot.session.clone())
    }

    /// Open an upload session for `target`, or (with `resume`) say where
    /// one stands. The caller states the file's size and SHA-256.
    pub async fn start_upload(
        &self,
        who: &Who,
        target: Target,
        size: u64,
        sha256: &str,
        resume: Option<&str>,
    ) -> Result<UploadState> {
        self.sweep();
        let sha256 = loraflow_proto::convert::artifact::sha256(sha256)
            .map_err(|v| Error::invalid("sha256", v.to_string()))?;
        let limits = self.limits();
        if size > limits.max_file_bytes {
            return Err(Error::invalid(
                "size_bytes",
                format!(
                    "{size} bytes is over the server's limit of {} bytes per file",
                    limits.max_file_bytes
                ),
            ));
        }
        if let Some(id) = resume {
            self.revive_upload(id).await?;
            let session = self.session(who, id)?;
            let s = session.lock().await;
            if s.target != target || s.size != size || s.sha256 != sha256 {
                return Err(Error::invalid(
                    "upload_id",
                    format!(
                        "upload {id} is for another file; start a new upload without upload_id"
                    ),
                ));
            }
            return Ok(UploadState {
                upload_id: id.to_owned(),
                committed: s.committed,
                uri: s.stored.clone(),
            });
        }
        if let Target::DatasetFile {
            dataset_upload_id, ..
        } = &target
        {
            self.revive_dataset(dataset_upload_id).await?;
        }
        let dest_uri = self.destination(who, &target, &sha256, size).await?;
        if self.inner.sessions.lock().expect("sessions lock").len() >= limits.max_sessions {
            return Err(Error::Busy(format!(
                "{} upload sessions are open, the server's limit; retry later",
                limits.max_sessions
            )));
        }
        let id = new_id();
        tokio::fs::create_dir_all(&self.inner.staging)
            .await
            .map_err(|e| Error::Storage(format!("{}: {e}", self.inner.staging.display())))?;
        let staged = self.inner.staging.join(&id);
        let file = tokio::fs::File::create(&staged)
            .await
            .map_err(|e| Error::Storage(format!("{}: {e}", staged.display())))?;
        let record = persist::UploadRecord {
            owner: who.clone(),
            target: target.clone(),
            dest_uri: dest_uri.clone(),
            size,
            sha256: sha256.clone(),
        };
        if let Err(e) =
            persist::write(&persist::upload_record(&self.inner.staging, &id), &record).await
        {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(e);
        }
        let session = Session {
            owner: who.clone(),
            target,
            dest_uri,
            size,
            sha256,
            staged,
            file: Some(file),
            committed: 0,
            hasher: sha2::Sha256::new(),
            stored: None,
        };
        let session = Arc::new(tokio::sync::Mutex::new(session));
        self.inner.sessions.lock().expect("sessions lock").insert(
            id.clone(),
            Slot {
                owner: who.clone(),
                session: session.clone(),
                touched: Instant::now(),
            },
        );
        let mut s = session.lock().await;
        // An empty file is complete at once.
        if size == 0 {
            self.finish(&id, &mut s).await?;
        }
        Ok(UploadState {
            upload_id: id,
            committed: s.committed,
            uri: s.stored.clone(),
        })
    }

    /// Where `target` is stored, once `who` is allowed to write it.
    async fn destination(
        &self,
        who: &Who,
        target: &Target,
        sha256: &Sha256,
        size: u64,
    ) -> Result<String> {
        let store = self.engine().artifacts();
        match target {
            Target::StepOutput {
                job_id,
                lease_id,
                name,
            } => {
                access::check_name("step_output.name", name, self.limits().max_name_bytes)?;
                let step = access::leased_step(self.engine(), who, job_id, lease_id).await?;
                Ok(store.uri_of(&format!("{}/{name}", access::step_output_dir(&step))))
            }
            Target::DatasetFile {
                dataset_upload_id,
                name,
            } => self.dataset_file_destination(who, dataset_upload_id, name, sha256, size),
        }
    }

    /// Append `data` at `offset`; answers the committed offset, and the
    /// stored URI once the last byte is in and verified.
    pub async fn write_chunk(
        &self,
        who: &Who,
        id: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<UploadState> {
        if data.len() > CHUNK_BYTES {
            return Err(Error::invalid(
                "data",
                format!(
                    "a chunk of {} bytes is over the limit of {CHUNK_BYTES}",
                    data.len()
                ),
            ));
        }
        self.revive_upload(id).await?;
        let session = self.session(who, id)?;
        let mut s = session.lock().await;
        if offset != s.committed || s.stored.is_some() {
            return Err(Error::WrongOffset {
                id: id.to_owned(),
                offset,
                committed: s.committed,
            });
        }
        if s.committed + data.len() as u64 > s.size {
            let what = format!("more bytes than the announced size of {} bytes", s.size);
            self.drop_session(id, &mut s).await;
            return Err(Error::Mismatch {
                id: id.to_owned(),
                what,
            });
        }
        let written = match s.file.as_mut() {
            Some(f) => f.write_all(data).await,
            None => Err(std::io::Error::other("the staged file is closed")),
        };
        if let Err(e) = written {
            self.drop_session(id, &mut s).await;
            return Err(Error::Storage(format!("staging upload {id}: {e}")));
        }
        s.hasher.update(data);
        s.committed += data.len() as u64;
        if s.committed == s.size {
            self.finish(id, &mut s).await?;
        }
        Ok(UploadState {
            upload_id: id.to_owned(),
            committed: s.committed,
            uri: s.stored.clone(),
        })
    }

    /// Check the digest and store the file; a mismatch stores nothing and
    /// ends the session.
    async fn finish(&self, id: &str, s: &mut Session) -> Result<()> {
        if let Some(mut f) = s.file.take()
            && let Err(e) = f.flush().await
        {
            self.drop_session(id, s).await;
            return Err(Error::Storage(format!("staging upload {id}: {e}")));
        }
        let actual = hex_digest(s.hasher.clone());
        if actual != s.sha256 {
            let what = format!(
                "the bytes received have sha256 {actual}, not the announced {}",
                s.sha256
            );
            self.drop_session(id, s).await;
            return Err(Error::Mismatch {
                id: id.to_owned(),
                what,
            });
        }
        // The lease may have ended while the bytes came.
        if let Target::StepOutput {
            job_id, lease_id, ..
        } = &s.target
            && let Err(e) = access::leased_step(self.engine(), &s.owner, job_id, lease_id).await
        {
            self.drop_session(id, s).await;
            return Err(e);
        }
        let stored = self
            .engine()
            .artifacts()
            .put_file(&s.dest_uri, &s.staged)
            .await;
        let _ = tokio::fs::remove_file(&s.staged).await;
        if let Err(e) = stored {
            self.forget(id);
            return Err(e.into());
        }
        s.stored = Some(s.dest_uri.clone());
        let _ = tokio::fs::remove_file(persist::upload_record(&self.inner.staging, id)).await;
        if let Target::DatasetFile {
            dataset_upload_id,
            name,
        } = &s.target
        {
            self.dataset_file_stored(dataset_upload_id, name);
        }
        Ok(())
    }

    fn forget(&self, id: &str) {
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(id);
        let _ = std::fs::remove_file(persist::upload_record(&self.inner.staging, id));
    }

    async fn drop_session(&self, id: &str, s: &mut Session) {
        s.file = None;
        let _ = tokio::fs::remove_file(&s.staged).await;
        self.forget(id);
    }

    /// `uri` from `offset`, if `who` may read it: a tenant names one of its
    /// jobs, an executor the lease it holds.
    pub async fn download(
        &self,
        who: &Who,
        uri: &str,
        offset: u64,
        job_id: &str,
        lease_id: &str,
    ) -> Result<Download> {
        access::check_uri("uri", uri)?;
        let expected = match who {
            Who::Tenant(tenant) => {
                if !lease_id.is_empty() {
                    return Err(Error::Denied(
                        "a tenant token cannot act for a step lease; name the job only".into(),
                    ));
                }
                let job = access::tenant_job(self.engine(), tenant, job_id).await?;
                let found = access::job_artifacts(&job).find(|a| a.uri == uri).cloned();
                let artifact = found.ok_or_else(|| {
                    Error::Denied(format!("{uri} is not an artifact of job {job_id}"))
                })?;
                Some(artifact.sha256)
            }
            _ => {
                let step = access::leased_step(self.engine(), who, job_id, lease_id).await?;
                if !access::step_may_read(&step, uri) {
                    return Err(Error::Denied(format!(
                        "{uri} is neither the dataset nor an input of step {} of job {job_id}",
                        step.step_id
                    )));
                }
                step.inputs
                    .iter()
                    .chain(
                        step.epochs
                            .iter()
                            .flat_map(|e| e.lora.iter().chain(e.samples.iter())),
                    )
                    .find(|a| a.uri == uri)
                    .map(|a| a.sha256.clone())
            }
        };
        let store = self.engine().artifacts();
        // A dataset file has no recorded digest: hash it first.
        let sha256 = match expected {
            Some(s) => s,
            None => store.digest_of(uri).await?.0,
        };
        let (size, stream) = store.read_from(uri, offset).await?;
        use futures::TryStreamExt;
        Ok(Download {
            size,
            sha256,
            chunks: Box::pin(stream.map_err(Error::from)),
        })
    }

    /// The files of the dataset folder (or registered base model folder) of
    /// the step `lease_id` holds.
    pub async fn list_files(
        &self,
        who: &Who,
        uri: &str,
        job_id: &str,
        lease_id: &str,
    ) -> Result<Vec<ListedFile>> {
        access::check_uri("uri", uri)?;
        let step = access::leased_step(self.engine(), who, job_id, lease_id).await?;
        if !access::is_step_folder(&step, uri) {
            return Err(Error::Denied(format!(
                "{uri} is not the dataset of job {job_id}; a step lists only its own dataset \
                 and registered base model"
            )));
        }
        let store = self.engine().artifacts();
        let folder = format!("{}/", uri.trim_end_matches('/'));
        let mut out = Vec::new();
        for (name, size) in store.list_dir(&folder).await? {
            let file_uri = format!("{folder}{name}");
            let (sha256, _) = store.digest_of(&file_uri).await?;
            out.push(ListedFile {
                name,
                size,
                sha256,
                uri: file_uri,
            });
        }
        if out.is_empty() {
            return Err(Error::NotFound(uri.to_owned()));
        }
        Ok(out)
    }

    /// Publish the approved LoRA of the publish step `lease_id` holds: the
    /// server copies it to its publish root and verifies the copy.
    pub async fn publish(
        &self,
        who: &Who,
        job_id: &str,
        lease_id: &str,
        artifact: &Artifact,
    ) -> Result<Artifact> {
        let step = access::leased_step(self.engine(), who, job_id, lease_id).await?;
        if step.kind.as_str() != loraflow_core::workflow::StepKind::PUBLISH {
            return Err(Error::Denied(format!(
                "step {} of job {job_id} is a {} step; only a publish step publishes",
                step.step_id, step.kind
            )));
        }
        let approved = step.approved_lora().cloned();
        let Some(lora) = approved else {
            return Err(Error::Denied(format!(
                "job {job_id} has no approved epoch with a LoRA to publish"
            )));
        };
        if lora.uri != artifact.uri || lora.sha256 != artifact.sha256 {
            return Err(Error::Denied(format!(
                "{} is not the approved LoRA of job {job_id} ({})",
                artifact.uri, lora.uri
            )));
        }
        let publisher = loraflow_executors::Publish {
            destination: self.inner.options.publish_root.clone(),
        };
        let dest = loraflow_executors::artifacts::absolute_uri(&publisher.destination_for(&step))?;
        Ok(self
            .engine()
            .artifacts()
            .copy_verified(&lora, &dest)
            .await?)
    }
}
