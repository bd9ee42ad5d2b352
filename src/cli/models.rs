//! `loraflow models`: the base models of the server's catalogue
//! (`ListBaseModels`), disabled ones included and marked; `models check`
//! (in `model_check.rs`) looks at a model on this machine.

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
}

pub async fn models(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        None | Some(ModelsCommand::List) => list(&args.conn).await,
        Some(ModelsCommand::Check(a)) => super::model_check::check(a, args.conn.json),
    }
}

fn json(m: &pb::BaseModel) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "label": m.label,
        "family": m.family,
        "engines": m.engines,
        "min_vram_gb": m.min_vram_gb,
        "disabled": m.disabled,
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
        out!(
            "{:<14} {:<7} {:<22} {:>8}  {}{disabled}",
            m.id,
            m.family,
            m.engines.join(","),
            vram,
            m.label
        )?;
    }
    Ok(())
}
