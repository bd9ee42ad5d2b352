//! `loraflow replay`: re-apply a job's events from the store, show the state
//! after each, verify its chain, head and signatures, and export JSON lines.
//! Never creates a store: a missing one is exit 3.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use loraflow::audit::audit_job_with;
use loraflow::core::ids::JobId;

use super::audit::Source;
use super::client::Exit;
use super::exit;
use super::output::{StdoutClosed, out};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The job id.
    pub job: String,
    #[command(flatten)]
    pub source: Source,
    /// Write the history as JSON lines to this file (`-`: stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (store, keys, _) = super::audit::open(&args.source, false).await?;
    let job = JobId::new(args.job.clone());
    let audit = audit_job_with(&store, &job, &keys).await?.ok_or_else(|| {
        Exit(
            exit::FAILED,
            format!("the store has no events of job {job}"),
        )
    })?;
    let to_stdout = args.jsonl.as_deref().is_some_and(|p| p.as_os_str() == "-");
    for e in &audit.events {
        let state = e
            .state_after
            .map(|s| s.to_string())
            .unwrap_or_else(|| "UNREADABLE".into());
        let line = format!(
            "{:>8} #{:<3} {:<16} v{:<6} -> {state}",
            e.position, e.sequence, e.event_type, e.event_version
        );
        if to_stdout {
            eprintln!("{line}");
        } else {
            out!("{line}")?;
        }
    }
    if let Some(path) = &args.jsonl {
        let mut out: Box<dyn Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            )
        };
        for e in &audit.events {
            writeln!(out, "{}", serde_json::to_string(e)?).map_err(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    anyhow::Error::new(StdoutClosed)
                } else {
                    anyhow::Error::new(e).context("cannot write the history")
                }
            })?;
        }
        if !to_stdout {
            eprintln!("history written to {}", path.display());
        }
    }
    match audit.verdict() {
        None => {
            eprintln!(
                "chain verified: {} events, every one signed, the head holds; final state {}",
                audit.events.len(),
                audit.job.state().map(|s| s.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Some(verdict) => Err(Exit(
            exit::TAMPERED,
            format!("TAMPERED: the first bad event: {verdict}"),
        )
        .into()),
    }
}
