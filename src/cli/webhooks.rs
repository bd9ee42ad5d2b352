//! `loraflow webhooks <job>`: the delivery log of a job's webhooks
//! (`ListWebhookDeliveries`): one line per event and URL with its state and
//! attempts, the last attempt's outcome for those not delivered.

use clap::Args;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::out;
use super::times::rfc3339;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// The job id.
    pub job: String,
    /// Deliveries per page.
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Follow every page (default: the first only).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

fn state(d: &pb::WebhookDelivery) -> String {
    pb::WebhookDeliveryState::try_from(d.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("WEBHOOK_DELIVERY_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn json(d: &pb::WebhookDelivery) -> serde_json::Value {
    let attempts: Vec<_> = d
        .attempts
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.attempt,
                "time": rfc3339(a.time.as_ref()),
                "status_code": a.status_code,
                "error": a.error,
                "delivered": a.delivered,
            })
        })
        .collect();
    serde_json::json!({
        "event_id": d.event_id,
        "url": d.url,
        "event_type": d.event_type,
        "position": d.position,
        "sequence": d.sequence,
        "state": state(d),
        "enqueue_time": rfc3339(d.enqueue_time.as_ref()),
        "next_attempt_time": d.next_attempt_time.as_ref().map(|t| rfc3339(Some(t))),
        "deliver_time": d.deliver_time.as_ref().map(|t| rfc3339(Some(t))),
        "attempts": attempts,
    })
}

/// The outcome of the last attempt, for people.
fn last_attempt(d: &pb::WebhookDelivery) -> String {
    match d.attempts.last() {
        None => "not tried yet".into(),
        Some(a) if a.delivered => format!("HTTP {}", a.status_code),
        Some(a) if a.status_code != 0 => format!("HTTP {}: {}", a.status_code, a.error),
        Some(a) => a.error.clone(),
    }
}

pub async fn webhooks(args: WebhooksArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let mut token = String::new();
    let mut header = !args.conn.json;
    loop {
        let page = client
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                job_id: args.job.clone(),
                page_size: args.page_size,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| {
                status_error(
                    &format!("cannot list the webhook deliveries of job {}", args.job),
                    s,
                )
            })?
            .into_inner();
        for d in &page.deliveries {
            if args.conn.json {
                out!("{}", json(d))?;
                continue;
            }
            if std::mem::take(&mut header) {
                out!(
                    "{:>4}  {:<18} {:<10} {:>8}  {:<40}  LAST ATTEMPT",
                    "SEQ",
                    "EVENT",
                    "STATE",
                    "ATTEMPTS",
                    "URL"
                )?;
            }
            out!(
                "{:>4}  {:<18} {:<10} {:>8}  {:<40}  {}",
                d.sequence,
                d.event_type,
                state(d),
                d.attempts.len(),
                d.url,
                last_attempt(d)
            )?;
        }
        if page.next_page_token.is_empty() || !args.all {
            if !page.next_page_token.is_empty() {
                eprintln!("more deliveries follow; pass --all to list them");
            }
            if header {
                eprintln!("job {} has no webhook deliveries", args.job);
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}
