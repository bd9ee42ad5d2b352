//! An auditor's view of a job: read its events straight from the event
//! store, re-apply them one by one to rebuild the state after each, and
//! verify the hash chain the engine wrote at commit, so an event edited or
//! removed in the database is found at its position.
//!
//! ```text
//! cargo run --example replay_audit -- sqlite://loraflow-demo/loraflow.db <job-id>
//! ```

use anyhow::{Context, bail};
use loraflow::audit::{Audit, audit_job};
use loraflow::core::catalogue::Catalogue;
use loraflow::core::ids::JobId;
use loraflow::core::job::JobServices;
use loraflow::store::Store;

/// The audit of `job` in the store at `store_url`.
pub async fn run(store_url: &str, job: &str) -> anyhow::Result<Audit> {
    let store = Store::open(store_url, JobServices::new(Catalogue::builtin()))
        .await
        .with_context(|| format!("cannot open {store_url}"))?;
    let audit = audit_job(&store, &JobId::new(job)).await;
    store.close().await;
    audit?.with_context(|| format!("{store_url} holds no events of job {job}"))
}

/// One line per event: position, sequence, type, version, state after it.
pub fn lines(audit: &Audit) -> Vec<String> {
    audit
        .events
        .iter()
        .map(|e| {
            let state = e
                .state_after
                .map_or_else(|| "UNREADABLE".to_owned(), |s| s.to_string());
            format!(
                "{:>8} #{:<3} {:<16} v{:<6} -> {state}",
                e.position, e.sequence, e.event_type, e.event_version
            )
        })
        .collect()
}

#[allow(dead_code)] // The tests call `run`; `main` is for `cargo run --example`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, job] = args.as_slice() else {
        bail!("usage: replay_audit <store-url> <job-id>");
    };
    let audit = run(store, job).await?;
    for line in lines(&audit) {
        println!("{line}");
    }
    match audit.first_tampered() {
        None => println!("hash chain intact over {} events", audit.events.len()),
        Some(position) => bail!("the event at position {position} was altered or removed"),
    }
    Ok(())
}
