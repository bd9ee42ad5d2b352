//! `loraflow models`: the base models of the server's catalogue
//! (`ListBaseModels`), disabled ones included and marked, and the tenant's
//! registered ones with their URIs; `models register` / `models delete`
//! manage the tenant's own (`RegisterBaseModel`, `DeleteBaseModel`);
//! `models check` (in `model_check.rs`) looks at a model on this machine.

use clap::{Args, Subcommand};
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::out;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: Option<ModelsCommand>,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the catalogue's base models (the default).
    List,
    /// Check a diffusers folder or a single-file `.safetensors` checkpoint:
    /// its family, missing components, and whether the native engine can
    /// train it. Exits 0 when it is complete, 1 when something is missing
    /// or it is not a base model. Needs no server.
    Check(super::model_check::CheckArgs),
    /// Register a base model of your tenant: a diffusers folder under your
    /// uploads or allowed roots, which the server checks before it records
    /// it. Jobs then name it as their base model (`--model <name>`).
    Register(RegisterArgs),
    /// Delete one of your tenant's registered base models. Jobs created on
    /// it keep it.
    Delete {
        /// The registered model's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// What jobs will name it by (lowercase letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Where it is: `file:///srv/studio/models/my-sd/` or an absolute path
    /// the server can read, under your uploads or allowed roots.
    pub uri: String,
    /// A label for people.
    #[arg(long, default_value = "")]
    pub label: String,
    /// The family you expect (`sd15`, `sd2`, `sdxl`, `flux`); a model of
    /// another family is refused. Default: as detected.
    #[arg(long)]
    pub family: Option<String>,
    /// The engine that will train it. Default: native.
    #[arg(long)]
    pub engine: Option<String>,
    /// GPU memory a training step needs; 0: it trains on CPU.
    #[arg(long, default_value_t = 0)]
    pub min_vram_gb: u32,
}

pub async fn models(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        None | Some(ModelsCommand::List) => list(&args.conn).await,
        Some(ModelsCommand::Check(a)) => super::model_check::check(a, args.conn.json),
        Some(ModelsCommand::Register(a)) => register(&args.conn, a).await,
        Some(ModelsCommand::Delete { name }) => delete(&args.conn, name).await,
    }
}

async fn register(conn: &Connection, a: RegisterArgs) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let m = client
        .register_base_model(pb::RegisterBaseModelRequest {
            name: a.name,
            uri: a.uri,
            label: a.label,
            family: a.family.unwrap_or_default(),
            engine: a.engine.unwrap_or_default(),
            min_vram_gb: a.min_vram_gb,
        })
        .await
        .map_err(|s| status_error("cannot register the base model", s))?
        .into_inner();
    if conn.json {
        out!("{}", json(&m))?;
    } else {
        out!(
            "registered {} ({}, {}; {}) at {}",
            m.id,
            m.family,
            m.engines.join(","),
            m.evidence,
            m.uri
        )?;
    }
    Ok(())
}

async fn delete(conn: &Connection, name: String) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    client
        .delete_base_model(pb::DeleteBaseModelRequest { name: name.clone() })
        .await
        .map_err(|s| status_error("cannot delete the base model", s))?;
    if conn.json {
        out!("{}", serde_json::json!({ "deleted": name }))?;
    } else {
        out!("deleted {name}")?;
    }
    Ok(())
}

fn json(m: &pb::BaseModel) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "label": m.label,
        "family": m.family,
        "engines": m.engines,
        "min_vram_gb": m.min_vram_gb,
        "disabled": m.disabled,
        "uri": m.uri,
    })
}

async fn list(conn: &Connection) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let models = client
        .list_base_models(pb::ListBaseModelsRequest {})
        .await
        .map_err(|s| status_error("cannot list the base models", s))?
        .into_inner()
        .base_models;
    if conn.json {
        for m in &models {
            out!("{}", json(m))?;
        }
        return Ok(());
    }
    out!(
        "{:<14} {:<7} {:<22} {:>8}  {}",
        "MODEL",
        "FAMILY",
        "ENGINES",
        "VRAM",
        "LABEL"
    )?;
    for m in &models {
        let vram = match m.min_vram_gb {
            0 => "cpu".to_owned(),
            n => format!("{n} GB"),
        };
        let disabled = if m.disabled { "  (disabled)" } else { "" };
        let registered = if m.uri.is_empty() {
            String::new()
        } else {
            format!("  (registered: {})", m.uri)
        };
        out!(
            "{:<14} {:<7} {:<22} {:>8}  {}{disabled}{registered}",
            m.id,
            m.family,
            m.engines.join(","),
            vram,
            m.label
        )?;
    }
    Ok(())
}
