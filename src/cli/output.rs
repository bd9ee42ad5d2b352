//! Printing jobs and events: plain text for people, JSON for scripts.
//!
//! Every line of data goes through [`line`] (or the [`out!`] macro), which
//! turns a closed stdout into [`StdoutClosed`]; `main` answers that with a
//! quiet exit 0, as Unix tools stop when their reader goes away
//! (`loraflow history ID --json | head -1`). `println!` would panic there.
//!
//! Why not reset SIGPIPE to its default action at the start of `main`, as
//! some Rust tools do: the process would then die of the signal (status 141
//! in a shell, a failure under `set -o pipefail`), in the middle of whatever
//! it was doing (an open store in `demo`), and it takes an `unsafe` call into
//! libc. An error that travels up like any other ends the command through
//! its normal path, and is handled in one place.

use std::io::Write;

use loraflow_proto::pb::v1 as pb;
use serde::Serialize;

/// Standard output was closed by its reader. Not a failure: the command
/// stops quietly with exit 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct StdoutClosed;

/// Write one line of data to stdout; a closed stdout is [`StdoutClosed`].
pub fn line(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `println!` for data: `out!("{x}")?` writes through [`line`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// A job as the CLI prints it.
#[derive(Debug, Serialize)]
pub struct JobOut {
    pub job_id: String,
    pub tenant: String,
    pub state: String,
    pub etag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureOut>,
    pub base_model: String,
    pub engine: String,
    pub steps: Vec<StepOut>,
    pub epochs: Vec<EpochOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_epoch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_step: Option<u64>,
    /// The epoch a reviewer is pointed at, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_epoch: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub suggestion_reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// The loss plot, once training has drawn it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_plot: Option<String>,
    /// The contact sheet of the samples, once sampling has drawn it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_sheet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<i64>,
    pub last_position: u64,
}

#[derive(Debug, Serialize)]
pub struct FailureOut {
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct StepOut {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Queued, and no connected executor could ever run it: what is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EpochOut {
    pub epoch: u32,
    /// The optimisation step the LoRA was saved (or the samples rendered) at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Made on a `save-now`/`sample-now` request: approve it by `step`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    pub samples: Vec<String>,
}

/// The URI of the last report named `name`.
fn report(j: &pb::Job, name: &str) -> Option<String> {
    j.reports
        .iter()
        .rfind(|a| a.name == name)
        .map(|a| a.uri.clone())
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

impl From<&pb::Job> for JobOut {
    fn from(j: &pb::Job) -> Self {
        let state = pb::JobState::try_from(j.state)
            .map(|s| enum_name(s.as_str_name(), "JOB_STATE_"))
            .unwrap_or_default();
        let spec = j.spec.clone().unwrap_or_default();
        JobOut {
            job_id: j.job_id.clone(),
            tenant: j.tenant.clone(),
            state,
            etag: j.etag.clone(),
            failure: j.failure.as_ref().map(|f| FailureOut {
                reason: pb::FailureReason::try_from(f.reason)
                    .map(|r| enum_name(r.as_str_name(), "FAILURE_REASON_"))
                    .unwrap_or_default(),
                message: f.message.clone(),
            }),
            base_model: spec.base_model,
            engine: spec.engine,
            steps: j
                .steps
                .iter()
                .map(|s| StepOut {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    status: pb::StepStatus::try_from(s.status)
                        .map(|st| enum_name(st.as_str_name(), "STEP_STATUS_"))
                        .unwrap_or_default(),
                    attempt: s.attempt,
                    percent: s.progress.as_ref().map(|p| p.percent),
                    last_error: s.last_error.as_ref().map(|e| e.message.clone()),
                    waiting_for: Some(s.waiting_for.clone()).filter(|w| !w.is_empty()),
                })
                .collect(),
            epochs: j
                .epochs
                .iter()
                .map(|e| EpochOut {
                    epoch: e.epoch,
                    step: e.step,
                    requested: e.requested,
                    lora: e.lora.as_ref().map(|a| a.uri.clone()),
                    loss: e.loss,
                    validation_loss: e.validation_loss,
                    samples: e.samples.iter().map(|a| a.uri.clone()).collect(),
                })
                .collect(),
            approved_epoch: j.approved_epoch,
            approved_step: j.approved_step,
            suggested_epoch: j.suggested_epoch,
            suggestion_reason: j.suggestion_reason.clone(),
            warnings: j.warnings.clone(),
            published: j.published_artifact.as_ref().map(|a| a.uri.clone()),
            loss_plot: report(j, loraflow::core::artifact::APPROVED_LOSS_PLOT)
                .or_else(|| report(j, loraflow::core::artifact::LOSS_PLOT)),
            contact_sheet: report(j, loraflow::core::artifact::CONTACT_SHEET),
            queue_position: j.queue_position,
            eta_seconds: j.eta.as_ref().map(|d| d.seconds),
            last_position: j.last_position,
        }
    }
}

/// Print a job for people.
pub fn print_job(j: &JobOut) -> anyhow::Result<()> {
    out!("job       {}", j.job_id)?;
    out!(
        "state     {}{}",
        j.state,
        j.failure
            .as_ref()
            .map(|f| format!(" ({}: {})", f.reason, f.message))
            .unwrap_or_default()
    )?;
    out!("model     {} (engine {})", j.base_model, j.engine)?;
    out!("etag      {}", j.etag)?;
    if let Some(q) = j.queue_position {
        out!("queue     position {q}")?;
    }
    if let Some(eta) = j.eta_seconds {
        out!("eta       {eta}s")?;
    }
    for s in &j.steps {
        let pct = s.percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
        let err = s
            .last_error
            .as_ref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default();
        out!(
            "  step {:<10} {:<16} attempt {}{pct}{err}",
            s.id,
            s.status,
            s.attempt
        )?;
        if let Some(w) = &s.waiting_for {
            out!("       {w}")?;
        }
    }
    for e in &j.epochs {
        let loss = e.loss.map(|l| format!(" loss {l:.4}")).unwrap_or_default();
        let val = e
            .validation_loss
            .map(|l| format!(" validation {l:.4}"))
            .unwrap_or_default();
        let what = match (e.requested, e.step) {
            (true, Some(step)) => format!("  step {step} (on request, in epoch {})", e.epoch),
            _ => format!("  epoch {}", e.epoch),
        };
        out!("{what}{loss}{val}  {}", e.lora.as_deref().unwrap_or("-"))?;
        for s in &e.samples {
            out!("    sample {s}")?;
        }
    }
    if let Some(p) = &j.loss_plot {
        out!("loss plot {p}")?;
    }
    if let Some(p) = &j.contact_sheet {
        out!("samples   {p}")?;
    }
    if !j.suggestion_reason.is_empty() {
        out!("suggested {}", j.suggestion_reason)?;
    }
    match (j.approved_epoch, j.approved_step) {
        (_, Some(step)) => out!("approved  the LoRA saved at step {step}")?,
        (Some(a), None) => out!("approved  epoch {a}")?,
        (None, None) => {}
    }
    for w in &j.warnings {
        out!("warning   {w}")?;
    }
    if let Some(p) = &j.published {
        out!("published {p}")?;
    }
    Ok(())
}

pub fn emit_job(job: &pb::Job, json: bool) -> anyhow::Result<()> {
    let shown = JobOut::from(job);
    if json {
        out!("{}", serde_json::to_string(&shown)?)?;
    } else {
        print_job(&shown)?;
    }
    Ok(())
}
