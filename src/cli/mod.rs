//! The `loraflow` command line: arguments (clap) and one module per group of
//! commands. Data goes to stdout, progress and logs to stderr.

pub mod audit;
pub mod client;
pub mod demo;
pub mod executors;
pub mod model_check;
pub mod models;
pub mod native;
pub mod output;
pub mod params;
pub mod replay;
pub mod retry;
pub mod retry_job;
pub mod review;
pub mod s3_args;
pub mod serve;
pub mod service_status;
pub mod times;
pub mod upload;
pub mod watch;
pub mod watch_lines;
pub mod webhooks;
pub mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The request was refused, or the job failed.
    pub const FAILED: u8 = 1;
    // 2: bad command-line usage, the code clap exits with.
    /// The server or the store could not be reached, or the server
    /// refused a worker's registration (bad token).
    pub const UNREACHABLE: u8 = 3;
    /// `replay` or `audit verify` found a tampered, unsigned or unreadable event.
    pub const TAMPERED: u8 = 4;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success, also when stdout is closed early (`| head -1`);
1 refused request or failed job; 2 usage error; 3 server or store
unreachable (or missing), or a worker's registration refused; 4 audit found
a tampered, removed or unsigned event. `serve` exits 0 after SIGTERM/SIGINT,
within --shutdown-grace.

Environment: LORAFLOW_SERVER, LORAFLOW_TOKEN, LORAFLOW_STORE, LORAFLOW_ARTIFACTS,
RUST_LOG (log filter, default info).";

/// loraflow: an event-sourced workflow engine for LoRA fine-tuning jobs.
#[derive(Debug, Parser)]
#[command(name = "loraflow", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole LoRA job on this machine: a SQLite store, the built-in
    /// executors in-process, the demo model and dataset; prints where the
    /// LoRA, the samples and the loss curve are.
    Demo(demo::DemoArgs),
    /// Run the engine and its gRPC server.
    Serve(serve::ServeArgs),
    /// Run executors on this machine for a remote server (connects out).
    Worker(worker::WorkerArgs),
    /// Submit a job (from a TOML file or flags); a local dataset folder is
    /// uploaded to the tenant's own namespace of the artifact store
    /// (`datasets/<tenant>/<sha256>/`, once per folder) after the server
    /// has checked the request. Every try sends one request id,
    /// so a submission that got no answer is retried safely; `--resume
    /// REQUEST_ID` finishes one later.
    Submit(client::SubmitArgs),
    /// Show a job.
    Status(client::JobArgs),
    /// List jobs, newest first.
    List(client::ListArgs),
    /// Follow a job live until it ends (or reaches review): progress bars
    /// on a terminal, else one plain line per change.
    Watch(watch::WatchArgs),
    /// Approve an epoch of a job in review (or, with `--step`, a LoRA saved
    /// on request); publishing follows.
    Approve(review::ApproveArgs),
    /// Reject a job in review.
    Reject(client::RejectArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// Ask a job's running training to save its LoRA now.
    SaveNow(client::JobArgs),
    /// Ask a job's running training to render samples now, with the job's
    /// sample settings or others for this request.
    SampleNow(review::SampleNowArgs),
    /// Print a job's stored events.
    History(client::JobArgs),
    /// Re-apply a job's events from the store, verify its signed chain,
    /// and export the history as JSON lines.
    Replay(replay::ReplayArgs),
    /// The signed audit log: verify, export, make a signing key.
    Audit(audit::AuditArgs),
    /// The base models of the server's catalogue; `models check <path>` says
    /// what a model folder or checkpoint on this machine is, what it lacks,
    /// and whether the native engine can train it.
    Models(models::ModelsArgs),
    /// The parameters a job on a base model accepts with an engine: type,
    /// default, bounds or choices; and the profiles.
    Params(params::ParamsArgs),
    /// Whether the server takes new jobs, its admission limits, your tenant.
    ServiceStatus(service_status::ServiceStatusArgs),
    /// Run a failed job again as a new job, from its spec as given.
    Retry(retry_job::RetryJobArgs),
    /// The delivery log of a job's webhooks.
    Webhooks(webhooks::WebhooksArgs),
    /// The executors connected to the server: engines, GPU, slots, leases.
    Executors(executors::ExecutorsArgs),
}

/// How a client reaches the server.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server URL.
    #[arg(
        long,
        env = "LORAFLOW_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Bearer token (a tenant's for job commands, an executor's for `worker`).
    #[arg(long, env = "LORAFLOW_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An optional `loraflow.toml`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file (see `loraflow::config`).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<loraflow::config::Config> {
        Ok(match &self.config {
            Some(p) => loraflow::config::Config::load(p)?,
            None => loraflow::config::Config::default(),
        })
    }
}
