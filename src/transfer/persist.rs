//! Upload sessions that outlive the server process. Each session writes a
//! small record beside its staged bytes (`<staging>/<id>.upload.json`; a
//! dataset upload `<id>.dataset.json`) when it starts, and removes it when
//! it ends. A process that is asked about a session it does not hold (the
//! server restarted) brings it back from its record: the staged file is
//! the committed offset (every byte in it was received in order), and its
//! hash state is rebuilt by reading it once, in bounded memory. The
//! dataset files already stored are found by listing the dataset's
//! staging folder in the artifact store.
//!
//! A record lives where the bytes live: a session resumes on the machine
//! that staged it (a restarted server with the same staging folder), and
//! expires like any session, `session_ttl` after its bytes last changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use loraflow_core::artifact::Sha256;
use loraflow_core::ids::TenantId;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncReadExt;

use super::access::Who;
use super::datasets::DatasetSession;
use super::error::{Error, Result};
use super::{Session, Slot, Target, Transfers};

/// What an upload session must remember across a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UploadRecord {
    pub owner: Who,
    pub target: Target,
    pub dest_uri: String,
    pub size: u64,
    pub sha256: Sha256,
}

/// What a dataset upload must remember across a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DatasetRecord {
    pub tenant: TenantId,
    pub dir: String,
    pub staging: String,
    pub files: BTreeMap<String, (u64, Sha256)>,
    pub missing: BTreeSet<String>,
}

/// Ids this server makes: 32 lower-case hex digits. Anything else names no
/// record (and never a path outside the staging folder).
fn plain_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn upload_record(staging: &Path, id: &str) -> PathBuf {
    staging.join(format!("{id}.upload.json"))
}

pub(super) fn dataset_record(staging: &Path, id: &str) -> PathBuf {
    staging.join(format!("{id}.dataset.json"))
}

/// Write `record` at `path` whole (a temporary file renamed over it).
pub(super) async fn write<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let text = serde_json::to_vec(record)
        .map_err(|e| Error::Storage(format!("recording the session: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, &text)
        .await
        .map_err(|e| Error::Storage(format!("{}: {e}", tmp.display())))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))
}

/// The record at `path` if it is there, readable, and younger than `ttl`
/// (by the last change of `fresh_by`, else of the record itself).
async fn read<T: for<'de> Deserialize<'de>>(
    path: &Path,
    fresh_by: Option<&Path>,
    ttl: Duration,
) -> Option<T> {
    let changed = |m: std::fs::Metadata| m.modified().ok();
    let modified = match fresh_by {
        Some(p) => tokio::fs::metadata(p).await.ok().and_then(changed)?,
        None => tokio::fs::metadata(path).await.ok().and_then(changed)?,
    };
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age >= ttl {
        return None;
    }
    let text = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&text).ok()
}

impl Transfers {
    /// Bring upload session `id` back from its record if this process does
    /// not hold it; nothing when there is no (live) record.
    pub(super) async fn revive_upload(&self, id: &str) -> Result<()> {
        if !plain_id(id)
            || self
                .inner
                .sessions
                .lock()
                .expect("sessions lock")
                .contains_key(id)
        {
            return Ok(());
        }
        let staging = &self.inner.staging;
        let staged = staging.join(id);
        let ttl = self.limits().session_ttl;
        let Some(record) =
            read::<UploadRecord>(&upload_record(staging, id), Some(staged.as_path()), ttl).await
        else {
            return Ok(());
        };
        if let Target::DatasetFile {
            dataset_upload_id, ..
        } = &record.target
        {
            self.revive_dataset(dataset_upload_id).await?;
        }
        // The staged bytes are what was committed; a record without them
        // (or with more than announced) is dropped.
        let storage = |e: std::io::Error| Error::Storage(format!("{}: {e}", staged.display()));
        let Ok(mut file) = tokio::fs::File::open(&staged).await else {
            let _ = tokio::fs::remove_file(upload_record(staging, id)).await;
            return Ok(());
        };
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut committed = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(storage)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            committed += n as u64;
        }
        if committed > record.size {
            let _ = tokio::fs::remove_file(&staged).await;
            let _ = tokio::fs::remove_file(upload_record(staging, id)).await;
            return Ok(());
        }
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&staged)
            .await
            .map_err(storage)?;
        tracing::info!(
            upload = id,
            committed,
            "an upload session resumes after a restart"
        );
        let session = Session {
            owner: record.owner.clone(),
            target: record.target,
            dest_uri: record.dest_uri,
            size: record.size,
            sha256: record.sha256,
            staged,
            file: Some(file),
            committed,
            hasher,
            stored: None,
        };
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .entry(id.to_owned())
            .or_insert_with(|| Slot {
                owner: record.owner,
                session: Arc::new(tokio::sync::Mutex::new(session)),
                touched: Instant::now(),
            });
        Ok(())
    }

    /// Bring dataset upload `id` back from its record if this process does
    /// not hold it: the files already in its staging folder count as
    /// stored.
    pub(super) async fn revive_dataset(&self, id: &str) -> Result<()> {
        if !plain_id(id)
            || self
                .inner
                .datasets
                .lock()
                .expect("datasets lock")
                .contains_key(id)
        {
            return Ok(());
        }
        let ttl = self.limits().session_ttl;
        let path = dataset_record(&self.inner.staging, id);
        let Some(record) = read::<DatasetRecord>(&path, None, ttl).await else {
            return Ok(());
        };
        let store = self.engine().artifacts();
        let present: BTreeSet<(String, u64)> = store
            .list_dir(&store.uri_of(&format!("{}/", record.staging)))
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let stored: BTreeSet<String> = record
            .missing
            .iter()
            .filter(|n| {
                record
                    .files
                    .get(*n)
                    .is_some_and(|(size, _)| present.contains(&((*n).clone(), *size)))
            })
            .cloned()
            .collect();
        tracing::info!(
            dataset_upload = id,
            stored = stored.len(),
            "a dataset upload resumes after a restart"
        );
        self.inner
            .datasets
            .lock()
            .expect("datasets lock")
            .entry(id.to_owned())
            .or_insert_with(|| DatasetSession::revived(record, stored));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_the_server_makes_name_a_record() {
        assert!(plain_id(&super::super::new_id()));
        for bad in [
            "",
            "../x",
            "ABCDEF0123456789abcdef0123456789",
            "a/b",
            &"a".repeat(33),
        ] {
            assert!(!plain_id(bad), "{bad:?}");
        }
    }
}
