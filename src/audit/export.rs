//! An export folder: what an auditor takes away and verifies offline with
//! the public key alone (`loraflow audit verify --export DIR --public-key FILE`).
//!
//! - `events.jsonl`: every event as stored (position, job, sequence, type,
//!   version, payload, metadata with link and signature), in feed order.
//! - `heads.jsonl`: every job's signed head.
//! - `checkpoints.jsonl`: the signed feed checkpoints, the newest signed at
//!   export time when the exporter holds the signing key.
//! - `manifest.json`: counts, the last position, and the ids and public
//!   keys of the keys the store trusts (for information: an auditor trusts
//!   the public key given to them, not the export's word).

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use loraflow_store::{Checkpoint, Head, Position, RawEvent, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::log::{AuditLog, collect};

pub const EVENTS_FILE: &str = "events.jsonl";
pub const HEADS_FILE: &str = "heads.jsonl";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const MANIFEST_FILE: &str = "manifest.json";

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub events: usize,
    pub heads: usize,
    pub checkpoints: usize,
    pub last_position: Position,
    /// The checkpoint signed for this export, if the exporter holds the key.
    pub checkpoint: Option<Checkpoint>,
    pub exported_at: String,
    /// Key id → public key (hex) of every key the store trusts.
    pub public_keys: std::collections::BTreeMap<String, String>,
}

/// Why an export could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file of the export could not be written or read. Fix the path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of a file is not what an export holds.
    #[error("{path} line {line}: {reason}; is this a `loraflow audit export` folder?")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] loraflow_store::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_lines<T: Serialize>(dir: &Path, name: &str, items: &[T]) -> Result<(), ExportError> {
    let path = dir.join(name);
    let mut out = BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
    for item in items {
        let line = serde_json::to_string(item).expect("export rows serialize");
        writeln!(out, "{line}").map_err(io(&path))?;
    }
    out.flush().map_err(io(&path))
}

fn read_lines<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Vec<T>, ExportError> {
    let path = dir.join(name);
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| ExportError::Malformed {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// Export `store`'s whole log to `dir` (created if missing; files in it are
/// replaced). With `sign`, a checkpoint at the feed's end is signed with the
/// store's key first and included.
pub async fn export(store: &Store, dir: &Path, sign: bool) -> Result<ExportSummary, ExportError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let checkpoint = if sign {
        Some(store.write_checkpoint().await?)
    } else {
        None
    };
    let log = collect(store).await?;
    write_lines(dir, EVENTS_FILE, &log.events)?;
    write_lines(dir, HEADS_FILE, &log.heads)?;
    write_lines(dir, CHECKPOINTS_FILE, &log.checkpoints)?;
    let summary = ExportSummary {
        dir: dir.to_owned(),
        events: log.events.len(),
        heads: log.heads.len(),
        checkpoints: log.checkpoints.len(),
        last_position: log.events.last().map_or(0, |e| e.position),
        checkpoint,
        exported_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        public_keys: store
            .keyring()
            .key_ids()
            .filter_map(|id| Some((id.to_owned(), store.keyring().get(id)?.to_hex())))
            .collect(),
    };
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("the manifest serializes"),
    )
    .map_err(io(&path))?;
    Ok(summary)
}

/// Read an export folder back.
pub fn read_export(dir: &Path) -> Result<AuditLog, ExportError> {
    let mut events: Vec<RawEvent> = read_lines(dir, EVENTS_FILE)?;
    events.sort_by_key(|e| e.position);
    let heads: Vec<Head> = read_lines(dir, HEADS_FILE)?;
    let checkpoints: Vec<Checkpoint> = read_lines(dir, CHECKPOINTS_FILE)?;
    Ok(AuditLog {
        events,
        heads,
        checkpoints,
    })
}
