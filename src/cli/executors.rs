//! `loraflow executors`: the executors connected to the server
//! (`ListExecutors`): engines, GPU, slots in use, the steps of the caller's
//! jobs each holds (other tenants' only counted), and when each was last
//! heard from.

use clap::Args;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::out;
use super::times::{ago, rfc3339};

#[derive(Debug, Args)]
pub struct ExecutorsArgs {
    /// Executors per page.
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Follow every page (default: the first only).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

fn json(e: &pb::ExecutorInfo) -> serde_json::Value {
    let caps = e.capabilities.clone().unwrap_or_default();
    let leases: Vec<_> = e
        .leases
        .iter()
        .map(|l| serde_json::json!({"job_id": l.job_id, "step_id": l.step_id}))
        .collect();
    let base_models: Vec<_> = caps
        .base_models
        .iter()
        .map(|m| serde_json::json!({"engine": m.engine, "model": m.model}))
        .collect();
    serde_json::json!({
        "executor_id": e.executor_id,
        "instance_id": e.instance_id,
        "kinds": caps.kinds,
        "engines": caps.engines,
        "model_families": caps.model_families,
        "gpu": caps.gpu,
        "gpu_name": caps.gpu_name,
        "vram_gb": caps.vram_gb,
        "slots": caps.max_concurrent_steps,
        "slots_used": e.leases.len() as u32 + e.other_tenants_leases,
        "labels": caps.labels,
        "base_models": base_models,
        "register_time": rfc3339(e.register_time.as_ref()),
        "last_seen_time": rfc3339(e.last_seen_time.as_ref()),
        "leases": leases,
        "other_tenants_leases": e.other_tenants_leases,
    })
}

fn gpu(c: &pb::ExecutorCapabilities) -> String {
    if !c.gpu {
        return "-".into();
    }
    let name = if c.gpu_name.is_empty() {
        "gpu"
    } else {
        c.gpu_name.as_str()
    };
    match c.vram_gb {
        0 => name.to_owned(),
        n => format!("{name} {n}GB"),
    }
}

fn leases(e: &pb::ExecutorInfo) -> String {
    let mut parts: Vec<String> = e
        .leases
        .iter()
        .map(|l| format!("{}/{}", l.job_id, l.step_id))
        .collect();
    if e.other_tenants_leases > 0 {
        parts.push(format!("+{} of other tenants", e.other_tenants_leases));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub async fn executors(args: ExecutorsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let mut token = String::new();
    let mut header = !args.conn.json;
    loop {
        let page = client
            .list_executors(pb::ListExecutorsRequest {
                page_size: args.page_size,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| status_error("cannot list the executors", s))?
            .into_inner();
        let now = chrono::Utc::now();
        for e in &page.executors {
            if args.conn.json {
                out!("{}", json(e))?;
                continue;
            }
            if std::mem::take(&mut header) {
                out!(
                    "{:<16} {:<14} {:<16} {:>5}  {:<9}  LEASES",
                    "EXECUTOR",
                    "ENGINES",
                    "GPU",
                    "SLOTS",
                    "SEEN"
                )?;
            }
            let caps = e.capabilities.clone().unwrap_or_default();
            let engines = if caps.engines.is_empty() {
                "-".to_owned()
            } else {
                caps.engines.join(",")
            };
            out!(
                "{:<16} {:<14} {:<16} {:>5}  {:<9}  {}",
                e.executor_id,
                engines,
                gpu(&caps),
                format!(
                    "{}/{}",
                    e.leases.len() as u32 + e.other_tenants_leases,
                    caps.max_concurrent_steps
                ),
                ago(e.last_seen_time.as_ref(), now),
                leases(e)
            )?;
        }
        if page.next_page_token.is_empty() || !args.all {
            if !page.next_page_token.is_empty() {
                eprintln!("more executors follow; pass --all to list them");
            }
            if header {
                eprintln!("no executor is connected");
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}
