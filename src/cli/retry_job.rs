//! `loraflow retry <job>`: run a failed job again as a new job
//! (`RetryJob`), from the failed job's spec as it was given. One request id
//! is sent on every try, so a retry whose answer was lost is repeated
//! without making a second job.

use clap::Args;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{Exit, connect_lazy, status_error};
use super::exit;
use super::output::emit_job;
use super::retry::{Failure, with_retries};

#[derive(Debug, Args)]
pub struct RetryJobArgs {
    /// The failed job.
    pub job: String,
    /// The retry's idempotency key (default: a fresh UUID).
    #[arg(long)]
    pub request_id: Option<String>,
    /// How often a call that got no answer is tried again with the same
    /// request id.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn retry_job(args: RetryJobArgs) -> anyhow::Result<()> {
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let client = connect_lazy(&args.conn)?;
    let answer = with_retries(args.retries, &request_id, || {
        let mut client = client.clone();
        let (job_id, request_id) = (args.job.clone(), request_id.clone());
        async move {
            client
                .retry_job(pb::RetryJobRequest { job_id, request_id })
                .await
        }
    })
    .await;
    let job = match answer {
        Ok(job) => job.into_inner(),
        Err(Failure::Refused { status, .. }) => {
            return Err(status_error(
                &format!("job {} cannot be retried", args.job),
                status,
            ));
        }
        Err(Failure::NoAnswer { status, tries }) => {
            return Err(Exit(
                exit::UNREACHABLE,
                format!(
                    "the server did not answer the retry after {tries} tries ({:?}: {}); run `loraflow retry {} --request-id {request_id}` again once it is back (it never makes a second job)\n  (is the server running? check --server / LORAFLOW_SERVER)",
                    status.code(),
                    status.message(),
                    args.job
                ),
            )
            .into());
        }
    };
    if !args.conn.json {
        eprintln!(
            "retried {} as {}; follow it with `loraflow watch {}`",
            args.job, job.job_id, job.job_id
        );
    }
    emit_job(&job, args.conn.json)
}
