//! `loraflow watch`: follow a job live with progress bars (stderr), or one
//! plain line per change on stdout when stdout is not a terminal
//! (`watch_lines.rs`), and reconnect after a dropped stream from the last
//! position seen, so no event is missed. A job that ends badly is an error
//! naming its reason.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use loraflow::core::job::JobEvent;
use loraflow_proto::pb::v1 as pb;

use super::client::{Exit, connect, status_error};
use super::output::out;
use super::{Connection, exit};

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub job: String,
    /// Start after this global position (0: from the job's first event).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Stop once the job waits for review.
    #[arg(long)]
    pub until_review: bool,
    #[command(flatten)]
    pub conn: Connection,
}

/// How a followed job ended, as far as the watcher is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    InReview,
    Published,
    Failed,
}

/// Progress bars for a job's steps, driven by its events.
pub struct Renderer {
    bars: MultiProgress,
    steps: HashMap<String, ProgressBar>,
    style: ProgressStyle,
    /// Steps queued now, with what they wait for as last shown (empty:
    /// nothing missing, only queueing).
    queued: HashMap<String, String>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        Self {
            bars: MultiProgress::new(),
            steps: HashMap::new(),
            style: ProgressStyle::with_template("{prefix:>9} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
            queued: HashMap::new(),
        }
    }

    /// True while some step is queued: its `waiting_for` is worth a look.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Show what queued `step` waits for (from `GetJob`), when it changed:
    /// a step no connected executor can run says so.
    pub fn waiting_for(&mut self, step: &str, waiting_for: &str) {
        let Some(shown) = self.queued.get_mut(step) else {
            return;
        };
        if shown == waiting_for {
            return;
        }
        *shown = waiting_for.to_owned();
        let message = if waiting_for.is_empty() {
            "queued".to_owned()
        } else {
            self.line(format!("{step}: {waiting_for}"));
            format!("queued: {waiting_for}")
        };
        self.bar(step).set_message(message);
    }

    fn bar(&mut self, step: &str) -> &ProgressBar {
        let (bars, style) = (&self.bars, &self.style);
        self.steps.entry(step.to_owned()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(step.to_owned());
            bar
        })
    }

    fn line(&self, text: String) {
        let _ = self.bars.println(text);
    }

    /// Show one event; `Some` when the job reached an outcome.
    pub fn event(&mut self, event: &JobEvent) -> Option<Outcome> {
        match event {
            JobEvent::JobCreated(e) => self.line(format!(
                "created job {} ({} on {})",
                e.job_id, e.spec.engine, e.spec.base_model
            )),
            JobEvent::JobSubmitted(e) => self.line(format!(
                "submitted: {} images, {} steps",
                e.dataset.image_count,
                e.workflow.steps.len()
            )),
            JobEvent::StepQueued(e) => {
                let attempt = if e.attempt > 1 {
                    format!(" (attempt {})", e.attempt)
                } else {
                    String::new()
                };
                self.bar(e.step_id.as_str())
                    .set_message(format!("queued{attempt}"));
                self.queued.insert(e.step_id.to_string(), String::new());
            }
            JobEvent::StepLeased(e) => {
                self.queued.remove(e.step_id.as_str());
                let bar = self.bar(e.step_id.as_str());
                bar.set_position(0);
                bar.set_message(format!("running on {}", e.executor_id));
            }
            JobEvent::StepProgressed(e) => {
                let p = &e.progress;
                let bar = self.bar(e.step_id.as_str());
                bar.set_position(p.percent.clamp(0.0, 100.0) as u64);
                let mut msg = Vec::new();
                if let Some(ep) = p.epoch {
                    msg.push(format!("epoch {ep}"));
                }
                if let (Some(s), Some(t)) = (p.step, p.total_steps) {
                    msg.push(format!("step {s}/{t}"));
                }
                if let Some(l) = p.loss {
                    msg.push(format!("loss {l:.4}"));
                }
                if let Some(r) = p.samples_per_sec {
                    msg.push(format!("{r:.1} img/s"));
                }
                if let Some(m) = &p.message {
                    msg.push(m.clone());
                }
                bar.set_message(msg.join("  "));
            }
            JobEvent::StepCompleted(e) => {
                let bar = self.bar(e.step_id.as_str()).clone();
                bar.set_position(100);
                bar.finish_with_message("done");
                for line in super::watch_lines::pictures(e) {
                    self.line(line);
                }
            }
            JobEvent::StepFailed(e) => {
                self.bar(e.step_id.as_str())
                    .set_message(format!("failed: {} ({})", e.error.message, e.error.kind));
            }
            JobEvent::LeaseExpired(e) => {
                self.bar(e.step_id.as_str())
                    .set_message(format!("lost its executor {}", e.executor_id));
            }
            JobEvent::StepRetried(e) => {
                let adj: Vec<_> = e
                    .adjustments
                    .iter()
                    .map(|a| format!("{} {} -> {}", a.param, a.from, a.to))
                    .collect();
                let adj = if adj.is_empty() {
                    String::new()
                } else {
                    format!(", {}", adj.join(", "))
                };
                self.line(format!(
                    "{}: retry {} of {} in {:.1}s{adj}",
                    e.step_id,
                    e.next_attempt,
                    e.max_attempts,
                    e.backoff_ms as f64 / 1000.0
                ));
            }
            JobEvent::ReviewRequested(e) => {
                self.line("ready for review:".into());
                for ep in &e.epochs {
                    let loss = ep.loss.map(|l| format!(" loss {l:.4}")).unwrap_or_default();
                    let val = ep
                        .validation_loss
                        .map(|l| format!(" validation {l:.4}"))
                        .unwrap_or_default();
                    self.line(format!(
                        "  {}{loss}{val}  {}",
                        super::watch_lines::entry_name(ep),
                        ep.lora.as_ref().map(|a| a.uri.as_str()).unwrap_or("-")
                    ));
                }
                if let Some(s) = super::watch_lines::suggestion(&e.epochs) {
                    self.line(format!("suggested {s}"));
                }
                return Some(Outcome::InReview);
            }
            JobEvent::JobApproved(e) => self.line(super::watch_lines::approved(e)),
            JobEvent::JobPublished(e) => {
                self.line(format!("published epoch {} at {}", e.epoch, e.artifact.uri));
                return Some(Outcome::Published);
            }
            JobEvent::JobRejected(e) => {
                self.line(format!("rejected by {}: {}", e.rejected_by, e.reason));
                return Some(Outcome::Failed);
            }
            JobEvent::JobFailed(e) => {
                self.queued.clear();
                self.line(format!("failed ({}): {}", e.reason, e.message));
                return Some(Outcome::Failed);
            }
            JobEvent::JobCancelled(e) => {
                self.queued.clear();
                self.line(format!("cancelled by {}: {}", e.cancelled_by, e.reason));
                return Some(Outcome::Failed);
            }
        }
        None
    }
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let mut client = connect(&args.conn).await?;
    let mut last = args.from;
    // Progress bars only where someone looks at them.
    let mut lines = (!args.conn.json && !std::io::stdout().is_terminal())
        .then(super::watch_lines::PlainLines::default);
    let mut renderer = (!args.conn.json && lines.is_none()).then(Renderer::new);
    let mut backoff = Duration::from_millis(200);
    loop {
        let stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: args.job.clone(),
                from_position: last,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable) => {
                eprintln!("connection lost; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            Err(s) => return Err(status_error("cannot watch the job", s)),
        };
        loop {
            // A quiet stream while a step is queued: ask whether anything
            // able to run it is connected (`waiting_for` is no event).
            let queued = renderer.as_ref().is_some_and(Renderer::has_queued)
                || lines
                    .as_ref()
                    .is_some_and(super::watch_lines::PlainLines::has_queued);
            let item = if queued {
                match tokio::time::timeout(WAITING_CHECK, stream.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        show_waiting_for(&mut client, &args.job, &mut renderer, &mut lines).await?;
                        continue;
                    }
                }
            } else {
                stream.next().await
            };
            let Some(item) = item else { break };
            let record = match item {
                Ok(r) => r,
                Err(s) => {
                    eprintln!(
                        "stream interrupted ({}); resuming after position {last}",
                        s.message()
                    );
                    break;
                }
            };
            backoff = Duration::from_millis(200);
            last = record.position;
            if args.conn.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "position": record.position,
                        "event_type": record.event_type,
                        "payload": serde_json::from_str::<serde_json::Value>(&record.payload_json)?,
                    })
                )?;
            }
            let event = record
                .event()
                .map_err(|e| anyhow::anyhow!("event {} cannot be read: {e}", record.position))?;
            if let Some(lines) = &mut lines {
                let at = super::times::rfc3339(record.recorded_at.as_ref());
                out!("{}", lines.line(&at, &event))?;
            }
            let outcome = match &mut renderer {
                Some(r) => r.event(&event),
                None => outcome_of(&event),
            };
            match outcome {
                Some(Outcome::Published) => return Ok(()),
                Some(Outcome::InReview) if args.until_review => return Ok(()),
                Some(Outcome::Failed) => {
                    let why =
                        super::watch_lines::failure(&event).unwrap_or_else(|| "failed".into());
                    return Err(Exit(exit::FAILED, format!("job {} {why}", args.job)).into());
                }
                _ => {}
            }
        }
        tokio::time::sleep(backoff).await;
        // Reconnect (the server may have restarted).
        if let Ok(c) = connect(&args.conn).await {
            client = c;
        }
    }
}

/// How long a stream may be quiet, while a step is queued, before the
/// watcher asks what the step waits for.
const WAITING_CHECK: Duration = Duration::from_secs(5);

/// Show each queued step's `waiting_for`, as a bar's message or a plain
/// line. A failed read is left for the stream to report.
async fn show_waiting_for(
    client: &mut super::client::Client,
    job: &str,
    renderer: &mut Option<Renderer>,
    lines: &mut Option<super::watch_lines::PlainLines>,
) -> anyhow::Result<()> {
    let Ok(j) = client
        .get_job(pb::GetJobRequest {
            job_id: job.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return Ok(());
    };
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for s in &j.into_inner().steps {
        if s.status != pb::StepStatus::Queued as i32 {
            continue;
        }
        if let Some(r) = renderer {
            r.waiting_for(&s.id, &s.waiting_for);
        }
        if let Some(line) = lines
            .as_mut()
            .and_then(|l| l.waiting_for(&at, &s.id, &s.waiting_for))
        {
            out!("{line}")?;
        }
    }
    Ok(())
}

fn outcome_of(e: &JobEvent) -> Option<Outcome> {
    match e {
        JobEvent::ReviewRequested(_) => Some(Outcome::InReview),
        JobEvent::JobPublished(_) => Some(Outcome::Published),
        JobEvent::JobFailed(_) | JobEvent::JobCancelled(_) | JobEvent::JobRejected(_) => {
            Some(Outcome::Failed)
        }
        _ => None,
    }
}
