//! `loraflow service-status`: whether the server takes new jobs, its
//! admission limits, the caller's tenant and where its uploads go
//! (`GetServiceStatus`).

use clap::Args;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::out;

#[derive(Debug, Args)]
pub struct ServiceStatusArgs {
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn service_status(args: ServiceStatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let s = client
        .get_service_status(pb::GetServiceStatusRequest {})
        .await
        .map_err(|s| status_error("cannot read the service status", s))?
        .into_inner();
    if args.conn.json {
        out!(
            "{}",
            serde_json::json!({
                "available": s.available,
                "message": s.message,
                "blocked_models": s.blocked_models,
                "max_images": s.max_images,
                "max_dataset_bytes": s.max_dataset_bytes,
                "max_retries": s.max_retries,
                "tenant": s.tenant,
                "dataset_root": s.dataset_root,
            })
        )?;
        return Ok(());
    }
    let available = if s.available {
        "yes".to_owned()
    } else {
        "no, new jobs are refused".to_owned()
    };
    out!("available     {available}")?;
    if !s.message.is_empty() {
        out!("message       {}", s.message)?;
    }
    if !s.blocked_models.is_empty() {
        out!("blocked       {}", s.blocked_models.join(", "))?;
    }
    out!("max images    {}", s.max_images)?;
    out!("max dataset   {} bytes", s.max_dataset_bytes)?;
    out!("max retries   {}", s.max_retries)?;
    out!("tenant        {}", s.tenant)?;
    if !s.dataset_root.is_empty() {
        out!("uploads to    {}", s.dataset_root)?;
    }
    Ok(())
}
