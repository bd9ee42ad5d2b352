//! `loraflow replay`: re-apply a job's events from the store, show the state
//! after each, verify the hash chain, and export JSON lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use loraflow::audit::audit_job;
use loraflow::core::catalogue::Catalogue;
use loraflow::core::ids::JobId;
use loraflow::core::job::JobServices;
use loraflow::store::Store;

use super::client::Exit;
use super::exit;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The job id.
    pub job: String,
    /// The event store to read.
    #[arg(long, env = "LORAFLOW_STORE", default_value = "sqlite://loraflow.db")]
    pub store: String,
    /// Write the history as JSON lines to this file (`-`: stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store, JobServices::new(Catalogue::builtin()))
        .await
        .map_err(|e| {
            Exit(
                exit::UNREACHABLE,
                format!("cannot open the store {}: {e}", args.store),
            )
        })?;
    let job = JobId::new(args.job.clone());
    let audit = audit_job(&store, &job).await?.ok_or_else(|| {
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
            println!("{line}");
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
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        if !to_stdout {
            eprintln!("history written to {}", path.display());
        }
    }
    match audit.first_tampered() {
        None => {
            eprintln!(
                "hash chain verified: {} events, final state {}",
                audit.events.len(),
                audit.job.state().map(|s| s.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Some(position) => {
            let why = match &audit.chain {
                Err(e) if e.position == position => format!("{:?}", e.fault),
                _ => audit
                    .unreadable
                    .iter()
                    .find(|(p, _)| *p == position)
                    .map(|(_, why)| why.clone())
                    .unwrap_or_default(),
            };
            Err(Exit(
                exit::TAMPERED,
                format!("TAMPERED: the first bad event is at position {position}: {why}"),
            )
            .into())
        }
    }
}
