//! `ArtifactService`: files through the server. The handlers only
//! translate wire messages and statuses; the rules are in
//! [`crate::transfer`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use loraflow_core::ids::TenantId;
use loraflow_core::validation::Violations;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::artifact_service_server::ArtifactService;
use loraflow_proto::status as wire;
use tonic::{Code, Request, Response, Status, Streaming};

use super::auth::{Auth, Caller, OPEN_TENANT};
use super::status::with_reason;
use crate::transfer::{AnnouncedFile, Error, Target, Transfers, Who};

pub struct Artifacts {
    pub transfers: Transfers,
    pub auth: Auth,
}

/// The status for a refused transfer.
pub fn transfer_status(e: Error) -> Status {
    let message = e.to_string();
    match e {
        Error::Invalid { field, message: m } => {
            let mut v = Violations::default();
            v.push(field, m);
            wire::invalid_argument(&v, "invalid transfer request")
        }
        Error::Denied(_) => with_reason(Code::PermissionDenied, message, "TRANSFER_DENIED"),
        Error::UnknownSession { .. } => with_reason(Code::NotFound, message, "UNKNOWN_UPLOAD"),
        Error::WrongOffset { .. } => with_reason(Code::FailedPrecondition, message, "WRONG_OFFSET"),
        Error::Mismatch { .. } => with_reason(Code::DataLoss, message, "DIGEST_MISMATCH"),
        Error::Incomplete { .. } => {
            with_reason(Code::FailedPrecondition, message, "DATASET_INCOMPLETE")
        }
        Error::Busy(_) => Status::resource_exhausted(message),
        Error::NotFound(_) => with_reason(Code::NotFound, message, "ARTIFACT_NOT_FOUND"),
        Error::Storage(_) => Status::unavailable(message),
    }
}

impl Artifacts {
    /// Who asks: an executor token is an executor, a tenant token a tenant.
    /// A server without tokens cannot tell them apart by token: a request
    /// naming a lease comes from an executor, any other from the open
    /// tenant.
    fn who<T>(&self, req: &Request<T>, names_lease: bool) -> Result<Who, Status> {
        if self.auth.is_open() {
            return Ok(if names_lease {
                Who::AnyExecutor
            } else {
                Who::Tenant(TenantId::new(OPEN_TENANT))
            });
        }
        match self.auth.executor(req) {
            Ok(Caller::Executor(id)) => Ok(Who::Executor(id)),
            Ok(Caller::AnyExecutor) => Ok(Who::AnyExecutor),
            Ok(Caller::Tenant(t)) => Ok(Who::Tenant(t)),
            Err(_) => self.auth.tenant(req).map(Who::Tenant).map_err(|_| {
                Status::unauthenticated("the bearer token is not valid for any tenant or executor")
            }),
        }
    }
}

fn lease_of(lease: Option<&pb::StepLeaseRef>) -> (&str, &str) {
    lease.map_or(("", ""), |l| (l.job_id.as_str(), l.lease_id.as_str()))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ArtifactService for Artifacts {
    async fn start_upload(
        &self,
        req: Request<pb::StartUploadRequest>,
    ) -> Result<Response<pb::StartUploadResponse>, Status> {
        let names_lease = matches!(
            req.get_ref().target,
            Some(pb::start_upload_request::Target::StepOutput(_))
        );
        let who = self.who(&req, names_lease)?;
        let r = req.into_inner();
        let target = match r.target {
            Some(pb::start_upload_request::Target::StepOutput(t)) => {
                let (job, lease) = lease_of(t.lease.as_ref());
                Target::StepOutput {
                    job_id: job.to_owned(),
                    lease_id: lease.to_owned(),
                    name: t.name,
                }
            }
            Some(pb::start_upload_request::Target::DatasetFile(t)) => Target::DatasetFile {
                dataset_upload_id: t.dataset_upload_id,
                name: t.name,
            },
            None => {
                return Err(transfer_status(Error::Invalid {
                    field: "target".into(),
                    message: "required; name a step_output or a dataset_file".into(),
                }));
            }
        };
        let resume = (!r.upload_id.is_empty()).then_some(r.upload_id.as_str());
        let state = self
            .transfers
            .start_upload(&who, target, r.size_bytes, &r.sha256, resume)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(pb::StartUploadResponse {
            upload_id: state.upload_id,
            committed_offset: state.committed,
            max_chunk_bytes: loraflow_executors::artifact_stream::CHUNK_BYTES as u32,
            uri: state.uri.unwrap_or_default(),
        }))
    }

    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        // Sessions belong to the caller that opened them; a tenant's and an
        // executor's are told apart by token (open mode: by the session).
        let who = self.who(&req, false)?;
        let alt = self.who(&req, true)?;
        let mut stream = req.into_inner();
        let mut last = pb::UploadResponse::default();
        let mut as_who: Option<Who> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let state = match &as_who {
                Some(w) => {
                    self.transfers
                        .write_chunk(w, &chunk.upload_id, chunk.offset, &chunk.data)
                        .await
                }
                None => {
                    let first = self
                        .transfers
                        .write_chunk(&who, &chunk.upload_id, chunk.offset, &chunk.data)
                        .await;
                    match first {
                        Err(Error::UnknownSession { .. }) if alt != who => {
                            as_who = Some(alt.clone());
                            self.transfers
                                .write_chunk(&alt, &chunk.upload_id, chunk.offset, &chunk.data)
                                .await
                        }
                        other => {
                            as_who = Some(who.clone());
                            other
                        }
                    }
                }
            }
            .map_err(transfer_status)?;
            last = pb::UploadResponse {
                committed_offset: state.committed,
                uri: state.uri.unwrap_or_default(),
            };
        }
        Ok(Response::new(last))
    }

    type DownloadStream = ChunkStream;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let names_lease = req
            .get_ref()
            .lease
            .as_ref()
            .is_some_and(|l| !l.lease_id.is_empty());
        let who = self.who(&req, names_lease)?;
        let r = req.into_inner();
        let (job, lease) = lease_of(r.lease.as_ref());
        let download = self
            .transfers
            .download(&who, &r.uri, r.offset, job, lease)
            .await
            .map_err(transfer_status)?;
        let (size, sha256) = (download.size, download.sha256.0.clone());
        let mut offset = r.offset;
        let head = pb::DownloadChunk {
            size_bytes: size,
            sha256,
            offset,
            data: Vec::new(),
        };
        let body = download.chunks.map(move |c| {
            let data = c.map_err(transfer_status)?;
            let chunk = pb::DownloadChunk {
                size_bytes: 0,
                sha256: String::new(),
                offset,
                data: data.to_vec(),
            };
            offset += data.len() as u64;
            Ok(chunk)
        });
        let stream = futures::stream::once(async move { Ok(head) }).chain(body);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_files(
        &self,
        req: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let who = self.who(&req, true)?;
        let r = req.into_inner();
        let (job, lease) = lease_of(r.lease.as_ref());
        let files = self
            .transfers
            .list_files(&who, &r.uri, job, lease)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(pb::ListFilesResponse {
            files: files
                .into_iter()
                .map(|f| pb::RemoteFile {
                    name: f.name,
                    size_bytes: f.size,
                    sha256: f.sha256.0,
                    uri: f.uri,
                })
                .collect(),
        }))
    }

    async fn start_dataset(
        &self,
        req: Request<pb::StartDatasetRequest>,
    ) -> Result<Response<pb::StartDatasetResponse>, Status> {
        let who = self.who(&req, false)?;
        let files = req
            .into_inner()
            .files
            .into_iter()
            .map(|f| AnnouncedFile {
                name: f.name,
                size: f.size_bytes,
                sha256: f.sha256,
            })
            .collect();
        let start = self
            .transfers
            .start_dataset(&who, files)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(pb::StartDatasetResponse {
            dataset_uri: start.dataset_uri,
            dataset_upload_id: start.upload_id.unwrap_or_default(),
            missing: start.missing,
        }))
    }

    async fn commit_dataset(
        &self,
        req: Request<pb::CommitDatasetRequest>,
    ) -> Result<Response<pb::CommitDatasetResponse>, Status> {
        let who = self.who(&req, false)?;
        let (uri, stored) = self
            .transfers
            .commit_dataset(&who, &req.get_ref().dataset_upload_id)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(pb::CommitDatasetResponse {
            dataset_uri: uri,
            stored,
        }))
    }

    async fn publish_artifact(
        &self,
        req: Request<pb::PublishArtifactRequest>,
    ) -> Result<Response<pb::PublishArtifactResponse>, Status> {
        let who = self.who(&req, true)?;
        let r = req.into_inner();
        let (job, lease) = lease_of(r.lease.as_ref());
        let artifact = r
            .artifact
            .ok_or_else(|| {
                transfer_status(Error::Invalid {
                    field: "artifact".into(),
                    message: "required; name the approved LoRA".into(),
                })
            })?
            .try_into()
            .map_err(|v: Violations| {
                wire::invalid_argument(&v.nested("artifact"), "invalid artifact")
            })?;
        let published = self
            .transfers
            .publish(&who, job, lease, &artifact)
            .await
            .map_err(transfer_status)?;
        Ok(Response::new(pb::PublishArtifactResponse {
            artifact: Some(published.into()),
        }))
    }
}
