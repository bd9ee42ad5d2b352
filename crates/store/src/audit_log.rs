//! The store's side of the signed audit log: which key signs, signing feed
//! checkpoints, and the reads an audit or an export needs (a job's log with
//! its head, every head, every checkpoint, the whole feed as stored).

use std::sync::OnceLock;

use loraflow_core::ids::JobId;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::chain::{Checkpoint, GENESIS_HASH, Head, checkpoint_message};
use crate::checkpoint::fold_root;
use crate::error::Result;
use crate::event::{Position, RawEvent};
use crate::feed::FeedFilter;
use crate::keys::{AuditKey, Keyring, SigCheck};
use crate::options::StoreOptions;
use crate::store::Store;
use crate::url::StoreUrl;
use crate::verify::{ChainReport, Depth, verify_job};

/// Events read per query when walking the whole feed.
const BATCH: usize = 2_000;

/// The key of a store opened without `StoreOptions::audit_key` that has no
/// key file: one per process, so that every store this process opens on
/// one database (tests, a restart inside the process) agrees.
fn process_key() -> AuditKey {
    static KEY: OnceLock<AuditKey> = OnceLock::new();
    KEY.get_or_init(AuditKey::generate).clone()
}

/// The key that signs for a store at `url` (see `StoreOptions::audit_key`).
/// `audit_only`: read a SQLite store's key file if there is one, create
/// nothing.
pub(crate) fn signing_key(
    url: &StoreUrl,
    options: &StoreOptions,
    audit_only: bool,
) -> Result<AuditKey> {
    if let Some(k) = &options.audit_key {
        return Ok(k.clone());
    }
    match url {
        StoreUrl::Sqlite { path } => {
            let mut file = path.as_os_str().to_owned();
            file.push(".audit-key");
            let file = std::path::PathBuf::from(file);
            if audit_only {
                return Ok(if file.exists() {
                    AuditKey::load(&file)?
                } else {
                    process_key()
                });
            }
            let (key, created) = AuditKey::load_or_create(&file)?;
            if created {
                info!(
                    key_file = %file.display(),
                    key_id = key.key_id(),
                    "created the audit signing key {}; its public key (give it to auditors): {}",
                    file.display(),
                    key.public_key().to_hex()
                );
            }
            Ok(key)
        }
        StoreUrl::Postgres { .. } if !audit_only => {
            let key = process_key();
            warn!(
                key_id = key.key_id(),
                "no audit signing key configured for this PostgreSQL store: events are signed with a key that lives only as long as this process; set [audit] signing_key"
            );
            Ok(key)
        }
        _ => Ok(process_key()),
    }
}

/// Wait until the feed shows every event up to `written`: on PostgreSQL a
/// transaction still open (of this or another process) holds the feed
/// below the positions written after it. After `patience`, the store is
/// reported unavailable.
pub(crate) async fn feed_reaches(
    backend: &Backend,
    written: Position,
    patience: std::time::Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let head = backend.head().await?;
        if head >= written {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::Error::Unavailable(
                format!(
                    "the feed shows events up to position {head}, not {written}, after {patience:?}: \
                     a transaction that writes below {written} is still open; \
                     the first audit checkpoint waits for it (try again when it ends)"
                )
                .into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Sign a checkpoint at the feed's current end, continuing the running root
/// from `from` (or from the latest stored checkpoint whose signature `key`
/// verifies, or from the start), and store it. Returns the latest
/// checkpoint when the feed has not moved since.
pub(crate) async fn sign_checkpoint(
    backend: &Backend,
    key: &AuditKey,
    from: Option<Checkpoint>,
) -> Result<Checkpoint> {
    let own = Keyring::new([key.public_key()]);
    let from = match from {
        Some(c) => Some(c),
        None => backend
            .audit_checkpoints()
            .await?
            .into_iter()
            .rev()
            .find(|c| {
                own.check(&c.key_id, &checkpoint_message(c.position, &c.root), &c.sig)
                    == SigCheck::Valid
            }),
    };
    let (mut position, mut root) = match &from {
        Some(c) => (c.position, c.root.clone()),
        None => (0, GENESIS_HASH.to_owned()),
    };
    loop {
        let batch = backend
            .read_events(position, BATCH, &FeedFilter::all())
            .await?;
        let Some(last) = batch.last() else { break };
        position = last.position;
        root = fold_root(&root, &batch);
    }
    if let Some(c) = from
        && c.position == position
    {
        return Ok(c);
    }
    let checkpoint = Checkpoint {
        position,
        sig: key.sign(&checkpoint_message(position, &root)),
        root,
        key_id: key.key_id().into(),
        signed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    };
    backend.insert_audit_checkpoint(&checkpoint).await?;
    Ok(checkpoint)
}

impl Store {
    /// The key that signs this store's events, heads and checkpoints.
    pub fn audit_key(&self) -> &AuditKey {
        self.shared().repo.key()
    }

    /// The public keys this store accepts signatures of.
    pub fn keyring(&self) -> &Keyring {
        &self.shared().keys
    }

    /// Where this store began signing: the position of its first checkpoint.
    pub fn signing_began(&self) -> Position {
        self.shared()
            .signing_began
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pretend the store began signing at `position` (tests of stores
    /// written before signing).
    #[cfg(test)]
    pub(crate) fn set_signing_began(&self, position: Position) {
        self.shared()
            .signing_began
            .store(position, std::sync::atomic::Ordering::Relaxed);
    }

    /// A job's events exactly as stored, in sequence order, and its head,
    /// read together.
    pub async fn job_log(&self, job_id: &JobId) -> Result<(Vec<RawEvent>, Option<Head>)> {
        let log = self.shared().backend.job_log(job_id).await?;
        Ok((log.events, log.head))
    }

    /// Verify a job with `keys` (the store's own, or an auditor's).
    pub async fn verify_job_with(
        &self,
        job_id: &JobId,
        keys: &Keyring,
        depth: Depth,
    ) -> Result<ChainReport> {
        let (events, head) = self.job_log(job_id).await?;
        Ok(verify_job(
            job_id,
            &events,
            head.as_ref(),
            keys,
            depth,
            Some(self.signing_began()),
        ))
    }

    /// Every job's head.
    pub async fn heads(&self) -> Result<Vec<Head>> {
        self.shared().backend.heads().await
    }

    /// The signed feed checkpoints, oldest first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.shared().backend.audit_checkpoints().await
    }

    /// Sign and store a checkpoint at the feed's current end (the latest
    /// one if the feed has not moved). Exports call it; an engine may call
    /// it at any time.
    pub async fn write_checkpoint(&self) -> Result<Checkpoint> {
        sign_checkpoint(&self.shared().backend, self.audit_key(), None).await
    }

    /// Every event of the feed as stored, in feed order, up to `until`.
    pub async fn raw_feed(&self, until: Option<Position>) -> Result<Vec<RawEvent>> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let batch = self
                .shared()
                .backend
                .read_events(after, BATCH, &FeedFilter::all())
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            out.extend(
                batch
                    .into_iter()
                    .filter(|e| until.is_none_or(|u| e.position <= u)),
            );
            if until.is_some_and(|u| after >= u) {
                break;
            }
        }
        Ok(out)
    }
}
