//! A gRPC client of loraflow's `JobService`: submit a LoRA job, follow its
//! events (resuming from the last position after a dropped stream, so
//! nothing is missed), approve the epoch with the lowest loss when the job
//! reaches review, and wait for its publication.
//!
//! ```text
//! loraflow serve --with-executors &            # or a server plus `loraflow worker`
//! cargo run --example grpc_client -- http://127.0.0.1:50051 <token> <dataset-uri>
//! ```
//!
//! The dataset URI is a folder in the server's artifact store (`loraflow
//! submit` uploads a local folder and prints it). Only the generated
//! `loraflow-proto` client is used: any language with the `.proto` files
//! can do the same.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use loraflow_proto::pb::v1 as pb;
use pb::job_service_client::JobServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// How the followed job ended.
#[derive(Debug)]
pub struct Outcome {
    pub job: pb::Job,
    /// Every event's type, in order, as streamed.
    pub events: Vec<String>,
}

type Client = JobServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

async fn connect(server: &str, token: &str) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(server.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    Ok(JobServiceClient::with_interceptor(
        channel,
        Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        }),
    ))
}

/// Submit a job for the demo model on `dataset_uri` and follow it to its end.
pub async fn run(server: &str, token: &str, dataset_uri: &str) -> anyhow::Result<Outcome> {
    let mut client = connect(server, token).await?;
    let spec = pb::JobSpec {
        base_model: "tiny-sd".into(),
        engine: "native".into(),
        profile: "quick_test".into(),
        dataset: Some(pb::DatasetRef {
            uri: dataset_uri.into(),
            ..Default::default()
        }),
        sample_prompts: vec!["a corgi on a beach".into()],
        naming: Some(pb::Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        }),
        labels: [("team".to_owned(), "examples".to_owned())].into(),
        ..Default::default()
    };
    // A request id makes the submission safe to repeat after a timeout.
    let request_id = uuid::Uuid::new_v4().to_string();
    let job = client
        .create_job(pb::CreateJobRequest {
            job: Some(spec),
            request_id,
            validate_only: false,
        })
        .await?
        .into_inner();
    eprintln!("created {} ({:?})", job.name, job.state());

    let mut events = Vec::new();
    let mut last = 0;
    loop {
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job.job_id.clone(),
                from_position: last,
            })
            .await?
            .into_inner();
        while let Some(record) = stream.next().await {
            let record = match record {
                Ok(r) => r,
                Err(status) => {
                    eprintln!("stream dropped ({status}); resuming after {last}");
                    break;
                }
            };
            last = record.position;
            events.push(record.event_type.clone());
            match record.event_type.as_str() {
                "ReviewRequested" => {
                    let current = get(&mut client, &job.job_id).await?;
                    let best = current
                        .epochs
                        .iter()
                        .filter(|e| e.lora.is_some())
                        .min_by(|a, b| {
                            let loss = |e: &pb::EpochOutput| e.loss.unwrap_or(f64::INFINITY);
                            loss(a).total_cmp(&loss(b))
                        })
                        .context("the job is in review with no epoch")?;
                    eprintln!("approving epoch {}", best.epoch);
                    client
                        .approve_job(pb::ApproveJobRequest {
                            job_id: job.job_id.clone(),
                            epoch: best.epoch,
                            // Approve only what we looked at.
                            etag: current.etag.clone(),
                            step: None,
                        })
                        .await?;
                }
                "JobPublished" | "JobFailed" | "JobCancelled" | "JobRejected" => {
                    let job = get(&mut client, &job.job_id).await?;
                    return Ok(Outcome { job, events });
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(client: &mut Client, job_id: &str) -> anyhow::Result<pb::Job> {
    Ok(client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

#[allow(dead_code)] // The tests call `run`; `main` is for `cargo run --example`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, token, dataset] = args.as_slice() else {
        bail!("usage: grpc_client <server-url> <tenant-token> <dataset-uri>");
    };
    let outcome = run(server, token, dataset).await?;
    println!(
        "job {} ended {:?} after {} events",
        outcome.job.job_id,
        outcome.job.state(),
        outcome.events.len()
    );
    if let Some(a) = &outcome.job.published_artifact {
        println!("published LoRA: {} (sha256 {})", a.uri, a.sha256);
    }
    Ok(())
}
