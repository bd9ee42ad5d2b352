//! Dataset uploads through the server, into the caller's own
//! content-addressed namespace (`datasets/<tenant>/<manifest sha256>/`, the
//! layout of `loraflow_executors::dataset_upload`). The client lists its
//! files with sizes and digests; the server answers the dataset's URI and
//! the files it does not hold yet; each is uploaded (resumably) into a
//! staging folder; the commit moves them into place once all are in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use loraflow_core::artifact::Sha256;
use loraflow_core::ids::TenantId;
use loraflow_executors::dataset_upload::{DATASETS_DIR, manifest_digest};

use super::access::{self, Who};
use super::error::{Error, Result};
use super::{Transfers, new_id};

pub(super) struct DatasetSession {
    tenant: TenantId,
    /// `datasets/<tenant>/<manifest>`, relative to the artifact root.
    dir: String,
    /// `datasets/<tenant>/.incoming/<id>`.
    staging: String,
    files: BTreeMap<String, (u64, Sha256)>,
    /// Files to upload, and those uploaded so far.
    missing: BTreeSet<String>,
    stored: BTreeSet<String>,
    pub(super) touched: Instant,
}

impl DatasetSession {
    /// A session brought back from its record (see `persist.rs`), with the
    /// files already staged.
    pub(super) fn revived(r: super::persist::DatasetRecord, stored: BTreeSet<String>) -> Self {
        Self {
            tenant: r.tenant,
            dir: r.dir,
            staging: r.staging,
            files: r.files,
            missing: r.missing,
            stored,
            touched: Instant::now(),
        }
    }

    fn record(&self) -> super::persist::DatasetRecord {
        super::persist::DatasetRecord {
            tenant: self.tenant.clone(),
            dir: self.dir.clone(),
            staging: self.staging.clone(),
            files: self.files.clone(),
            missing: self.missing.clone(),
        }
    }
}

/// What `StartDataset` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetStart {
    pub dataset_uri: String,
    /// `None` when the server holds every file already.
    pub upload_id: Option<String>,
    pub missing: Vec<String>,
}

/// One file a client announces: relative name, size, SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

fn tenant_of(who: &Who) -> Result<&TenantId> {
    match who {
        Who::Tenant(t) => Ok(t),
        _ => Err(Error::Denied(
            "an executor token cannot upload datasets; use a tenant token".into(),
        )),
    }
}

impl Transfers {
    /// Begin uploading a dataset of `files` into the caller's namespace.
    pub async fn start_dataset(
        &self,
        who: &Who,
        files: Vec<AnnouncedFile>,
    ) -> Result<DatasetStart> {
        self.sweep();
        let tenant = tenant_of(who)?;
        let limits = self.limits();
        if files.is_empty() {
            return Err(Error::invalid(
                "files",
                "required; a dataset has at least one file",
            ));
        }
        if files.len() > limits.max_dataset_files {
            return Err(Error::invalid(
                "files",
                format!(
                    "{} files is over the server's limit of {} per dataset",
                    files.len(),
                    limits.max_dataset_files
                ),
            ));
        }
        let mut checked = BTreeMap::new();
        for (i, f) in files.into_iter().enumerate() {
            access::check_name(&format!("files[{i}].name"), &f.name, limits.max_name_bytes)?;
            if f.size > limits.max_file_bytes {
                return Err(Error::invalid(
                    &format!("files[{i}].size_bytes"),
                    format!(
                        "{} bytes is over the server's limit of {} bytes per file",
                        f.size, limits.max_file_bytes
                    ),
                ));
            }
            let sha = loraflow_proto::convert::artifact::sha256(&f.sha256)
                .map_err(|v| Error::invalid(&format!("files[{i}].sha256"), v.to_string()))?;
            if checked.insert(f.name.clone(), (f.size, sha)).is_some() {
                return Err(Error::invalid(
                    &format!("files[{i}].name"),
                    format!("{:?} is listed twice", f.name),
                ));
            }
        }
        let digest = manifest_digest(checked.iter().map(|(n, (s, d))| (n.as_str(), *s, d)));
        let dir = format!("{DATASETS_DIR}/{tenant}/{digest}");
        let store = self.engine().artifacts();
        let dataset_uri = store.uri_of(&format!("{dir}/"));
        let present: BTreeSet<(String, u64)> =
            store.list_dir(&dataset_uri).await?.into_iter().collect();
        let missing: BTreeSet<String> = checked
            .iter()
            .filter(|(n, (s, _))| !present.contains(&((*n).clone(), *s)))
            .map(|(n, _)| n.clone())
            .collect();
        if missing.is_empty() {
            return Ok(DatasetStart {
                dataset_uri,
                upload_id: None,
                missing: Vec::new(),
            });
        }
        let id = new_id();
        let session = DatasetSession {
            tenant: tenant.clone(),
            staging: format!("{DATASETS_DIR}/{tenant}/.incoming/{id}"),
            dir,
            files: checked,
            missing: missing.clone(),
            stored: BTreeSet::new(),
            touched: Instant::now(),
        };
        if self.inner.datasets.lock().expect("datasets lock").len() >= limits.max_sessions {
            return Err(Error::Busy(format!(
                "{} dataset uploads are open, the server's limit; retry later",
                limits.max_sessions
            )));
        }
        tokio::fs::create_dir_all(&self.inner.staging)
            .await
            .map_err(|e| Error::Storage(format!("{}: {e}", self.inner.staging.display())))?;
        super::persist::write(
            &super::persist::dataset_record(&self.inner.staging, &id),
            &session.record(),
        )
        .await?;
        self.inner
            .datasets
            .lock()
            .expect("datasets lock")
            .insert(id.clone(), session);
        Ok(DatasetStart {
            dataset_uri,
            upload_id: Some(id),
            missing: missing.into_iter().collect(),
        })
    }

    /// Where one file of a dataset session is staged, once checked against
    /// what the session announced.
    pub(super) fn dataset_file_destination(
        &self,
        who: &Who,
        id: &str,
        name: &str,
        sha256: &Sha256,
        size: u64,
    ) -> Result<String> {
        let tenant = tenant_of(who)?;
        access::check_id("dataset_file.dataset_upload_id", id)?;
        let mut datasets = self.inner.datasets.lock().expect("datasets lock");
        let unknown = || Error::UnknownSession {
            id: id.to_owned(),
            ttl_s: self.ttl_s(),
        };
        let session = datasets.get_mut(id).ok_or_else(unknown)?;
        if &session.tenant != tenant {
            return Err(Error::Denied(format!(
                "dataset upload {id} belongs to another tenant"
            )));
        }
        session.touched = Instant::now();
        match session.files.get(name) {
            Some((s, d)) if *s == size && d == sha256 => {}
            Some(_) => {
                return Err(Error::invalid(
                    "sha256",
                    format!("{name:?} was announced with another size or digest"),
                ));
            }
            None => {
                return Err(Error::invalid(
                    "dataset_file.name",
                    format!("{name:?} is not a file of dataset upload {id}"),
                ));
            }
        }
        Ok(self
            .engine()
            .artifacts()
            .uri_of(&format!("{}/{name}", session.staging)))
    }

    pub(super) fn dataset_file_stored(&self, id: &str, name: &str) {
        if let Some(s) = self
            .inner
            .datasets
            .lock()
            .expect("datasets lock")
            .get_mut(id)
        {
            s.stored.insert(name.to_owned());
            s.touched = Instant::now();
        }
    }

    /// Move a dataset's staged files into place; answers its URI and the
    /// number of files moved.
    pub async fn commit_dataset(&self, who: &Who, id: &str) -> Result<(String, u32)> {
        let tenant = tenant_of(who)?;
        access::check_id("dataset_upload_id", id)?;
        self.revive_dataset(id).await?;
        let (dir, staging, moved) = {
            let datasets = self.inner.datasets.lock().expect("datasets lock");
            let unknown = || Error::UnknownSession {
                id: id.to_owned(),
                ttl_s: self.ttl_s(),
            };
            let s = datasets.get(id).ok_or_else(unknown)?;
            if &s.tenant != tenant {
                return Err(Error::Denied(format!(
                    "dataset upload {id} belongs to another tenant"
                )));
            }
            let missing: Vec<String> = s.missing.difference(&s.stored).cloned().collect();
            if !missing.is_empty() {
                return Err(Error::Incomplete {
                    id: id.to_owned(),
                    missing,
                });
            }
            (s.dir.clone(), s.staging.clone(), s.missing.clone())
        };
        let store = self.engine().artifacts();
        for name in &moved {
            store
                .rename_uri(
                    &store.uri_of(&format!("{staging}/{name}")),
                    &store.uri_of(&format!("{dir}/{name}")),
                )
                .await?;
        }
        self.inner
            .datasets
            .lock()
            .expect("datasets lock")
            .remove(id);
        let _ =
            tokio::fs::remove_file(super::persist::dataset_record(&self.inner.staging, id)).await;
        // A local store leaves the staging folders behind.
        if let Ok(url) = url::Url::parse(&store.uri_of(&format!("{staging}/")))
            && let Ok(path) = url.to_file_path()
        {
            let _ = tokio::fs::remove_dir_all(&path).await;
            if let Some(parent) = path.parent() {
                let _ = tokio::fs::remove_dir(parent).await;
            }
        }
        Ok((store.uri_of(&format!("{dir}/")), moved.len() as u32))
    }
}
