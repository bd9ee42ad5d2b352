//! The client commands: submit, status, list, approve, reject, cancel, history.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use loraflow::core::catalogue::{Engine, ParamValue, Params};
use loraflow::core::job::{DatasetRef, JobSpec, Naming};
use loraflow::core::webhook::WebhookSpec;
use loraflow::core::workflow::WorkflowSpec;
use loraflow_proto::pb::v1 as pb;
use loraflow_proto::pb::v1::job_service_client::JobServiceClient;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use super::output::{emit_job, out};
use super::retry::{Failure, with_retries};
use super::{Connection, exit};

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

pub type Client = JobServiceClient<InterceptedService<Channel, Bearer>>;

/// An error that carries the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// A gRPC error as the CLI reports it, once: every bad field on its own
/// line with its path when the status lists them (the server's message
/// repeats them for clients that ignore details, so it is left out then),
/// else the message; and the exit code.
pub fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let fields = s
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.clone())
        .unwrap_or_default();
    let mut msg = if fields.is_empty() {
        format!("{what}: {}", s.message())
    } else {
        format!("{what}:")
    };
    for v in &fields {
        msg.push_str(&format!("\n  {}: {}", v.field, v.description));
    }
    let code = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            msg.push_str("\n  (is the server running? check --server / LORAFLOW_SERVER)");
            exit::UNREACHABLE
        }
        Code::Unauthenticated => {
            msg.push_str("\n  (pass a valid tenant token with --token or LORAFLOW_TOKEN)");
            exit::FAILED
        }
        _ => exit::FAILED,
    };
    Exit(code, msg).into()
}

/// A client whose connection is made on its first call (and made again
/// after it breaks): an unreachable server is a failed call, which a caller
/// that retries can try again.
pub fn connect_lazy(conn: &Connection) -> anyhow::Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(conn.server.clone())
        .with_context(|| format!("invalid server URL {:?}; use http://host:port", conn.server))?
        .connect_timeout(std::time::Duration::from_secs(10));
    let token = conn
        .token
        .as_ref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token contains characters that cannot be sent")?;
    Ok(
        JobServiceClient::with_interceptor(endpoint.connect_lazy(), Bearer(token))
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

pub async fn connect(conn: &Connection) -> anyhow::Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(conn.server.clone())
        .with_context(|| format!("invalid server URL {:?}; use http://host:port", conn.server))?;
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::Error::from(Exit(
            exit::UNREACHABLE,
            format!("cannot reach the server at {}: {e}\n  (start one with `loraflow serve`, or set --server)", conn.server),
        ))
    })?;
    let token = conn
        .token
        .as_ref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token contains characters that cannot be sent")?;
    Ok(JobServiceClient::with_interceptor(channel, Bearer(token))
        .max_decoding_message_size(64 * 1024 * 1024))
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job id.
    pub job: String,
    #[command(flatten)]
    pub conn: Connection,
}

/// A job file: the spec without the tenant (it comes from the token); the
/// dataset is a local folder (uploaded) or a URI.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub base_model: Option<String>,
    pub engine: Option<String>,
    pub profile: Option<String>,
    pub dataset: Option<String>,
    #[serde(default)]
    pub sample_prompts: Vec<String>,
    pub priority: Option<i32>,
    pub naming: Option<Naming>,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub workflow: Option<WorkflowSpec>,
    /// `[[webhooks]]` tables: `url` and `events`.
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A job file in TOML (flags override its values).
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub base_model: Option<String>,
    #[arg(long)]
    pub engine: Option<String>,
    #[arg(long)]
    pub profile: Option<String>,
    /// A local folder of images and captions (uploaded), or a dataset URI.
    #[arg(long)]
    pub dataset: Option<String>,
    /// What the LoRA is of; names the published file.
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub version: Option<String>,
    /// A sample prompt (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// A parameter, `name=value` (repeatable).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// A label, `key=value` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub priority: Option<i32>,
    /// A callback URL for the job's events, `URL` (every event) or
    /// `URL=workflow:completed,workflow:failed` (repeatable; see
    /// docs/webhooks.md for the event names).
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// The submission's idempotency key (at most 36 printable ASCII
    /// characters; default: a fresh UUID). Every try sends it, so repeating
    /// the submission returns the same job instead of making a second.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Finish an earlier submission whose answer was lost (the server
    /// crashed, the connection broke): the job made with this request id,
    /// submitted now if it was left pending. Creates nothing; takes no job
    /// file or flags.
    #[arg(
        long,
        value_name = "REQUEST_ID",
        conflicts_with_all = [
            "file", "base_model", "engine", "profile", "dataset", "subject", "version",
            "prompts", "params", "labels", "priority", "webhooks", "request_id",
        ]
    )]
    pub resume: Option<String>,
    /// How often a call that got no answer (server unreachable, connection
    /// reset, deadline passed) is tried again with the same request id,
    /// pausing 0.5 s, 1 s, 2 s, ... (at most 8 s) between tries.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Write a local dataset folder straight into this artifact store (the
    /// server's root) instead of uploading it through the server (the
    /// default: the client needs no access to the store).
    #[arg(long, env = "LORAFLOW_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// How `--artifacts s3://...` reaches the bucket.
    #[command(flatten)]
    pub s3: super::s3_args::S3Args,
    #[command(flatten)]
    pub conn: Connection,
}

fn parse_value(raw: &str) -> ParamValue {
    if let Ok(b) = raw.parse::<bool>() {
        ParamValue::Bool(b)
    } else if let Ok(i) = raw.parse::<i64>() {
        ParamValue::Int(i)
    } else if let Ok(f) = raw.parse::<f64>() {
        ParamValue::Float(f)
    } else {
        ParamValue::Str(raw.to_owned())
    }
}

fn key_value(raw: &str, what: &str) -> anyhow::Result<(String, String)> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("{what} {raw:?} must be written key=value"),
    }
}

/// `--webhook URL[=event,event]`. The URL itself may contain `=` (in its
/// query), so the events follow the last `=` only when they read as event
/// names; the engine validates both.
fn webhook_flag(raw: &str) -> WebhookSpec {
    match raw.rsplit_once('=') {
        Some((url, events))
            if !events.is_empty() && events.split(',').all(|e| e == "*" || e.contains(':')) =>
        {
            WebhookSpec::new(url, events.split(','))
        }
        _ => WebhookSpec::new(raw, ["*"]),
    }
}

impl SubmitArgs {
    /// The spec, and the local dataset folder still to upload (if any).
    async fn spec(
        &self,
        client: &mut Client,
    ) -> anyhow::Result<(JobSpec, Option<super::upload::PendingUpload>)> {
        let mut f: JobFile = match &self.file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid job file", p.display()))?
            }
            None => JobFile::default(),
        };
        let pick = |flag: &Option<String>, file: Option<String>, what: &str| {
            flag.clone()
                .or(file)
                .with_context(|| format!("no {what}: give --{what} or set it in the job file"))
        };
        let base_model = pick(&self.base_model, f.base_model.take(), "base-model")?;
        let engine: Engine = pick(
            &self.engine,
            f.engine.take().or(Some("native".into())),
            "engine",
        )?
        .parse()?;
        let dataset = pick(&self.dataset, f.dataset.take(), "dataset")?;
        let mut naming = f.naming.take().unwrap_or(Naming {
            subject: String::new(),
            version: "v1".into(),
        });
        if let Some(s) = &self.subject {
            naming.subject = s.clone();
        }
        if let Some(v) = &self.version {
            naming.version = v.clone();
        }
        if naming.subject.is_empty() {
            bail!("no subject: give --subject or [naming] subject in the job file");
        }
        for p in &self.params {
            let (k, v) = key_value(p, "--param")?;
            f.params.insert(k, parse_value(&v));
        }
        for l in &self.labels {
            let (k, v) = key_value(l, "--label")?;
            f.labels.insert(k, v);
        }
        let mut prompts = f.sample_prompts;
        prompts.extend(self.prompts.iter().cloned());
        let (dataset_uri, upload) = super::upload::dataset_ref(
            client,
            &dataset,
            self.artifacts.as_deref(),
            &self.s3,
            &self.conn,
        )
        .await?;
        let spec = JobSpec {
            tenant: "from-token".into(),
            base_model: base_model.into(),
            engine,
            profile: self.profile.clone().or(f.profile),
            params: f.params,
            dataset: DatasetRef {
                uri: dataset_uri,
                sha256: None,
            },
            sample_prompts: prompts,
            priority: self.priority.or(f.priority).unwrap_or(0),
            naming,
            labels: f.labels,
            workflow: f.workflow,
            webhooks: f
                .webhooks
                .into_iter()
                .chain(self.webhooks.iter().map(|w| webhook_flag(w)))
                .collect(),
        };
        Ok((spec, upload))
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    if let Some(request_id) = &args.resume {
        return resume(&args, request_id).await;
    }
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let client = connect_lazy(&args.conn)?;
    let (spec, upload) = args.spec(&mut client.clone()).await?;
    let spec: pb::JobSpec = spec.into();
    if let Some(upload) = upload {
        // Every check but the dataset listing first: a refused submit
        // uploads nothing.
        match create(&client, &args, &request_id, &spec, true).await {
            Ok(_) => {}
            Err(Failure::Refused { status, .. }) => {
                return Err(status_error("the job was refused", status));
            }
            Err(Failure::NoAnswer { status, tries }) => {
                return Err(Exit(
                    exit::UNREACHABLE,
                    format!(
                        "the server did not answer the request check after {tries} tries ({:?}: {}); nothing was uploaded or created",
                        status.code(),
                        status.message()
                    ),
                )
                .into());
            }
        }
        upload.upload().await?;
    }
    eprintln!("submitting with request id {request_id}");
    let answer = create(&client, &args, &request_id, &spec, false).await;
    finish_submit(answer, &request_id, "the job was refused", args.conn.json)
}

/// `CreateJob` with `request_id`, retried while it gets no answer.
async fn create(
    client: &Client,
    args: &SubmitArgs,
    request_id: &str,
    spec: &pb::JobSpec,
    validate_only: bool,
) -> Result<tonic::Response<pb::Job>, Failure> {
    with_retries(args.retries, request_id, || {
        let (mut client, job) = (client.clone(), spec.clone());
        let request_id = request_id.to_owned();
        async move {
            client
                .create_job(pb::CreateJobRequest {
                    job: Some(job),
                    request_id,
                    validate_only,
                })
                .await
        }
    })
    .await
}

/// `submit --resume`: finish the submission made with `request_id`.
async fn resume(args: &SubmitArgs, request_id: &str) -> anyhow::Result<()> {
    let client = connect_lazy(&args.conn)?;
    let answer = with_retries(args.retries, request_id, || {
        let mut client = client.clone();
        let request_id = request_id.to_owned();
        async move { client.resume_job(pb::ResumeJobRequest { request_id }).await }
    })
    .await;
    finish_submit(
        answer,
        request_id,
        "the job cannot be resumed",
        args.conn.json,
    )
}

/// Report a submission: the job, or what is known of it when the server did
/// not confirm it. The command to finish it later is always named.
fn finish_submit(
    answer: Result<tonic::Response<pb::Job>, Failure>,
    request_id: &str,
    refused: &str,
    json: bool,
) -> anyhow::Result<()> {
    let rerun = format!("rerun with `loraflow submit --resume {request_id}`");
    let job = match answer {
        Ok(job) => job.into_inner(),
        Err(Failure::NoAnswer { status, tries }) => {
            let tries = match tries {
                1 => "one try".to_owned(),
                n => format!("{n} tries"),
            };
            return Err(Exit(
                exit::UNREACHABLE,
                format!(
                    "the server did not confirm the submission after {tries} ({:?}: {}); if it created the job, the job waits as pending under request id {request_id}: {rerun} once the server is back (it never makes a second job)\n  (is the server running? check --server / LORAFLOW_SERVER)",
                    status.code(),
                    status.message()
                ),
            )
            .into());
        }
        Err(Failure::Refused { status, retried }) => {
            let mut e = status_error(refused, status);
            if retried && let Some(Exit(_, message)) = e.downcast_mut::<Exit>() {
                message.push_str(&format!(
                    "\n  (an earlier try got no answer, so a job may exist under request id {request_id}: {rerun}, or cancel it)"
                ));
            }
            return Err(e);
        }
    };
    if job.state == pb::JobState::Pending as i32 {
        return Err(Exit(
            exit::FAILED,
            format!(
                "created as {}, the server did not confirm admission; {rerun}",
                job.job_id
            ),
        )
        .into());
    }
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    if !json {
        eprintln!("submitted; follow it with `loraflow watch {}`", job.job_id);
    }
    emit_job(&job, json)
}

pub async fn status(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: args.job.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("cannot get the job", s))?
        .into_inner();
    emit_job(&job, args.conn.json)
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (pending, submitted, processing, in_review, approved, published, failed).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub base_model: Option<String>,
    #[arg(long)]
    pub engine: Option<String>,
    /// Only jobs with this label, `key=value` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Jobs per page.
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Follow every page (default: the first only).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let state = match &args.state {
        None => 0,
        Some(s) => {
            let name = format!("JOB_STATE_{}", s.to_ascii_uppercase());
            pb::JobState::from_str_name(&name)
                .with_context(|| format!("unknown state {s:?}; use pending, submitted, processing, in_review, approved, published or failed"))?
                as i32
        }
    };
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest {
                page_size: args.page_size,
                page_token: token.clone(),
                state,
                base_model: args.base_model.clone().unwrap_or_default(),
                engine: args.engine.clone().unwrap_or_default(),
                labels: args.labels.clone(),
            })
            .await
            .map_err(|s| status_error("cannot list jobs", s))?
            .into_inner();
        for job in &page.jobs {
            let shown = super::output::JobOut::from(job);
            if args.conn.json {
                out!("{}", serde_json::to_string(&shown)?)?;
            } else {
                out!(
                    "{}  {:<11} {:<8} {}",
                    shown.job_id,
                    shown.state,
                    shown.base_model,
                    shown.published.unwrap_or_default()
                )?;
            }
        }
        if page.next_page_token.is_empty() || !args.all {
            if !page.next_page_token.is_empty() {
                eprintln!("more jobs follow; pass --all to list them");
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    pub job: String,
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn reject(args: RejectArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .reject_job(pb::RejectJobRequest {
            job_id: args.job.clone(),
            reason: args.reason.clone(),
            etag: args.etag.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| status_error("the rejection was refused", s))?
        .into_inner();
    emit_job(&job, args.conn.json)
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub job: String,
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .cancel_job(pb::CancelJobRequest {
            job_id: args.job.clone(),
            reason: args.reason.clone(),
            etag: args.etag.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| status_error("the cancellation was refused", s))?
        .into_inner();
    emit_job(&job, args.conn.json)
}

/// `save-now`: the running training saves its LoRA at its next step.
pub async fn save_now(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .save_now(pb::SaveNowRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(|s| status_error("the save was refused", s))?
        .into_inner();
    if !args.conn.json {
        eprintln!("asked the running training to save; the file appears among the epochs");
    }
    emit_job(&job, args.conn.json)
}

pub async fn history(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let events = client
        .get_job_history(pb::GetJobHistoryRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(|s| status_error("cannot read the history", s))?
        .into_inner()
        .events;
    for e in events {
        if args.conn.json {
            let line = serde_json::json!({
                "position": e.position,
                "sequence": e.sequence,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "payload": serde_json::from_str::<serde_json::Value>(&e.payload_json)?,
                "metadata": e.metadata,
            });
            out!("{line}")?;
        } else {
            out!(
                "{:>6} #{:<3} {:<16} {}",
                e.position,
                e.sequence,
                e.event_type,
                e.metadata
                    .get("recorded_at")
                    .map(String::as_str)
                    .unwrap_or("")
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_flags_take_optional_event_filters() {
        assert_eq!(
            webhook_flag("https://hooks.example/x"),
            WebhookSpec::new("https://hooks.example/x", ["*"])
        );
        assert_eq!(
            webhook_flag("https://hooks.example/x=workflow:completed,step:*"),
            WebhookSpec::new("https://hooks.example/x", ["workflow:completed", "step:*"])
        );
        // A query string is part of the URL.
        assert_eq!(
            webhook_flag("https://hooks.example/x?token=abc"),
            WebhookSpec::new("https://hooks.example/x?token=abc", ["*"])
        );
    }
}
