//! `loraflow audit`: verify one job or the whole store, export the log for
//! an auditor, verify an export offline with public keys alone, and make a
//! signing key. Never creates a store: a missing one is exit 3.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use loraflow::audit::{LogReport, collect, configured_keys, export, read_export, verify_log};
use loraflow::core::catalogue::Catalogue;
use loraflow::core::ids::JobId;
use loraflow::core::job::JobServices;
use loraflow::store::{AuditKey, Depth, Keyring, PublicKey, Store, StoreOptions};

use super::client::Exit;
use super::output::out;
use super::{ConfigArg, exit};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a job's log (or every job's, and the feed checkpoints) in a
    /// store or in an export: links, heads and every signature. Reports the
    /// first bad position and the kind (edited, removed, reordered,
    /// truncated, bad signature, unsigned); exit 4 when anything is wrong.
    Verify(VerifyArgs),
    /// Write the whole log as JSON lines, with every job's signed head and
    /// the signed feed checkpoints (a new one signed now when this machine
    /// holds the key), for an auditor to verify offline.
    Export(ExportArgs),
    /// Make a new Ed25519 signing key: writes FILE (PKCS#8 PEM, mode 0600)
    /// and FILE.pub, and prints the public key.
    Keygen(KeygenArgs),
}

/// Where an audit reads from and which keys it trusts.
#[derive(Debug, Args)]
pub struct Source {
    /// The event store to read (never created).
    #[arg(long, env = "LORAFLOW_STORE", default_value = "sqlite://loraflow.db")]
    pub store: String,
    /// Trust only these public keys (SPKI PEM or hex files; repeat for the
    /// keys of earlier rotations). Default: the keys of `[audit]` in the
    /// configuration, or the SQLite store's `<file>.audit-key`.
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_keys: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The job to verify.
    #[arg(required_unless_present_any = ["all", "export"], conflicts_with = "all")]
    pub job: Option<String>,
    /// Verify every job and the feed checkpoints.
    #[arg(long)]
    pub all: bool,
    /// Verify an export folder instead of a store (needs --public-key).
    #[arg(long, value_name = "DIR", requires = "public_keys")]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub source: Source,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The folder to write (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub source: Source,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (refused if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify(a) => verify(a).await,
        AuditCommand::Export(a) => export_cmd(a).await,
        AuditCommand::Keygen(a) => keygen(a),
    }
}

fn public_keys(files: &[PathBuf]) -> anyhow::Result<Keyring> {
    let mut ring = Keyring::default();
    for f in files {
        ring.add(PublicKey::load(f).map_err(|e| Exit(exit::FAILED, format!("--public-key: {e}")))?);
    }
    Ok(ring)
}

/// The store at `source.store`, opened for an audit (nothing created), with
/// the configuration's keys; the keys to verify with; and whether the store
/// holds its real signing key (configured, or with `sign`, the SQLite key
/// file), not one made for this process.
pub(crate) async fn open(source: &Source, sign: bool) -> anyhow::Result<(Store, Keyring, bool)> {
    let config = source.config.load()?;
    let keys = configured_keys(&config.audit)
        .map_err(|(field, e)| Exit(exit::FAILED, format!("{field}: {e}")))?;
    let mut audit_key = keys.signing.clone();
    if audit_key.is_none()
        && sign
        && let Some(path) = source.store.strip_prefix("sqlite://")
    {
        let file = PathBuf::from(format!("{path}.audit-key"));
        if file.exists() {
            audit_key = Some(AuditKey::load(&file).map_err(|e| Exit(exit::FAILED, e.to_string()))?);
        }
    }
    let holds_key = audit_key.is_some();
    let options = StoreOptions {
        audit_key,
        trusted_keys: keys.trusted.clone(),
        ..StoreOptions::default()
    };
    let store = Store::open_existing(
        &source.store,
        JobServices::new(Catalogue::builtin()),
        options,
    )
    .await
    .map_err(|e| {
        Exit(
            exit::UNREACHABLE,
            format!("cannot open the store {}: {e}", source.store),
        )
    })?;
    let ring = if source.public_keys.is_empty() {
        store.keyring().clone()
    } else {
        public_keys(&source.public_keys)?
    };
    Ok((store, ring, holds_key))
}

fn report(report: &LogReport, what: &str) -> anyhow::Result<()> {
    for p in &report.problems {
        out!("TAMPERED {p}")?;
    }
    if report.is_valid() {
        eprintln!(
            "{what}: verified {} job(s), {} event(s), {} checkpoint(s): every event signed and chained, every head and checkpoint holds",
            report.jobs, report.events, report.checkpoints
        );
        return Ok(());
    }
    let first = &report.problems[0];
    Err(Exit(
        exit::TAMPERED,
        format!(
            "{what}: {} problem(s); the first bad position is {}: {}",
            report.problems.len(),
            first.position,
            first.kind
        ),
    )
    .into())
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.export {
        let keys = public_keys(&args.source.public_keys)?;
        let log = read_export(dir).map_err(|e| Exit(exit::FAILED, e.to_string()))?;
        let mut r = verify_log(&log, &keys);
        if let Some(job) = &args.job {
            r.problems
                .retain(|p| p.job.as_ref().is_some_and(|j| j.as_str() == job));
        }
        return report(&r, &format!("export {}", dir.display()));
    }
    let (store, keys, _) = open(&args.source, false).await?;
    let result = if args.all {
        let log = collect(&store).await?;
        report(&verify_log(&log, &keys), "store")
    } else {
        let job = JobId::new(args.job.clone().unwrap_or_default());
        verify_one(&store, &job, &keys).await
    };
    store.close().await;
    result
}

async fn verify_one(store: &Store, job: &JobId, keys: &Keyring) -> anyhow::Result<()> {
    let (events, head) = store.job_log(job).await?;
    if events.is_empty() && head.is_none() {
        return Err(Exit(
            exit::FAILED,
            format!("the store has no events of job {job}"),
        )
        .into());
    }
    let r = loraflow::store::verify_job(job, &events, head.as_ref(), keys, Depth::Full, None);
    match r.first_problem() {
        None => {
            eprintln!(
                "job {job}: verified {} event(s): every event signed and chained, the head holds",
                r.events
            );
            Ok(())
        }
        Some(p) => {
            out!(
                "TAMPERED job {job}: {} at position {} (sequence {}): {}",
                p.fault,
                p.position,
                p.sequence,
                p.detail
            )?;
            Err(Exit(
                exit::TAMPERED,
                format!(
                    "job {job}: the first bad position is {}: {}",
                    p.position, p.fault
                ),
            )
            .into())
        }
    }
}

async fn export_cmd(args: ExportArgs) -> anyhow::Result<()> {
    let (store, _, holds_key) = open(&args.source, true).await?;
    let summary = export(&store, &args.out, holds_key)
        .await
        .with_context(|| format!("cannot export to {}", args.out.display()))?;
    store.close().await;
    if summary.checkpoint.is_none() {
        eprintln!(
            "note: this machine does not hold the store's signing key, so no new checkpoint was signed; the export has the {} stored one(s)",
            summary.checkpoints
        );
    }
    out!("{}", serde_json::to_string_pretty(&summary)?)?;
    eprintln!(
        "exported {} event(s), {} head(s), {} checkpoint(s) to {}; verify with `loraflow audit verify --export {} --public-key FILE`",
        summary.events,
        summary.heads,
        summary.checkpoints,
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let key = AuditKey::generate();
    key.write_new(&args.out)
        .map_err(|e| Exit(exit::FAILED, e.to_string()))?;
    let mut public = args.out.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    std::fs::write(&public, key.public_key().to_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    out!("{}", key.public_key().to_pem().trim_end())?;
    eprintln!(
        "wrote the signing key {} (mode 0600; set [audit] signing_key to it) and its public key {}; key id {}",
        args.out.display(),
        public.display(),
        key.key_id()
    );
    Ok(())
}
