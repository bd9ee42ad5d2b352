//! `loraflow watch` when stdout is not a terminal (a pipe, a file, a CI
//! log): one plain line per change instead of progress bars, each with the
//! event's time, the job's state, the step, and what changed (progress,
//! epoch, loss). Also the one-line story of how a job ended badly, which
//! `watch` prints in every mode.

use loraflow::core::artifact::{EpochOutput, Suggestion};
use loraflow::core::job::JobEvent;
use loraflow::core::job::events::JobApproved;

/// The job's state as far as its events tell, followed event by event.
#[derive(Debug)]
pub struct PlainLines {
    state: &'static str,
    /// Steps queued now, with what they wait for as last printed.
    queued: std::collections::BTreeMap<String, String>,
}

impl Default for PlainLines {
    fn default() -> Self {
        Self {
            state: "pending",
            queued: Default::default(),
        }
    }
}

impl PlainLines {
    /// True while some step is queued: its `waiting_for` is worth a look.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The line to print for what queued `step` waits for (from `GetJob`),
    /// when that changed.
    pub fn waiting_for(&mut self, at: &str, step: &str, waiting_for: &str) -> Option<String> {
        let shown = self.queued.get_mut(step)?;
        if shown == waiting_for {
            return None;
        }
        *shown = waiting_for.to_owned();
        let what = if waiting_for.is_empty() {
            "queued"
        } else {
            waiting_for
        };
        Some(format!("{at}  {:<10}  {step:<16}  {what}", self.state))
    }

    /// The line for one event recorded at `at` (RFC 3339).
    pub fn line(&mut self, at: &str, event: &JobEvent) -> String {
        match event {
            JobEvent::StepQueued(e) => {
                self.queued.insert(e.step_id.to_string(), String::new());
            }
            JobEvent::StepLeased(e) => {
                self.queued.remove(e.step_id.as_str());
            }
            JobEvent::JobFailed(_) | JobEvent::JobCancelled(_) | JobEvent::JobRejected(_) => {
                self.queued.clear();
            }
            _ => {}
        }
        self.state = match (self.state, event) {
            (_, JobEvent::JobCreated(_)) => "pending",
            (_, JobEvent::JobSubmitted(_)) => "submitted",
            ("submitted", JobEvent::StepLeased(_)) => "processing",
            (_, JobEvent::ReviewRequested(_)) => "in_review",
            (_, JobEvent::JobApproved(_)) => "approved",
            (_, JobEvent::JobPublished(_)) => "published",
            (_, JobEvent::JobFailed(_) | JobEvent::JobRejected(_) | JobEvent::JobCancelled(_)) => {
                "failed"
            }
            (s, _) => s,
        };
        let (step, what) = describe(event);
        format!(
            "{at}  {:<10}  {:<16}  {what}",
            self.state,
            step.unwrap_or_else(|| "-".into())
        )
    }
}

/// The step an event is about, and what it says.
fn describe(event: &JobEvent) -> (Option<String>, String) {
    match event {
        JobEvent::JobCreated(e) => (
            None,
            format!(
                "created job {} ({} on {})",
                e.job_id, e.spec.engine, e.spec.base_model
            ),
        ),
        JobEvent::JobSubmitted(e) => (
            None,
            format!(
                "submitted: {} images, {} steps",
                e.dataset.image_count,
                e.workflow.steps.len()
            ),
        ),
        JobEvent::StepQueued(e) => (
            Some(e.step_id.to_string()),
            format!("queued (attempt {})", e.attempt),
        ),
        JobEvent::StepLeased(e) => (
            Some(e.step_id.to_string()),
            format!("running on {}", e.executor_id),
        ),
        JobEvent::StepProgressed(e) => {
            let p = &e.progress;
            let mut parts = vec![format!("{:.0}%", p.percent.clamp(0.0, 100.0))];
            if let Some(ep) = p.epoch {
                parts.push(format!("epoch {ep}"));
            }
            if let (Some(s), Some(t)) = (p.step, p.total_steps) {
                parts.push(format!("step {s}/{t}"));
            }
            if let Some(l) = p.loss {
                parts.push(format!("loss {l:.4}"));
            }
            if let Some(l) = p.validation_loss {
                parts.push(format!("val {l:.4}"));
            }
            if let Some(m) = &p.message {
                parts.push(m.clone());
            }
            for out in &p.outputs {
                let mut made = Vec::new();
                if out.lora.is_some() {
                    made.push("a LoRA".to_owned());
                }
                if !out.samples.is_empty() {
                    made.push(format!("{} samples", out.samples.len()));
                }
                parts.push(format!("{}: {}", entry_name(out), made.join(" and ")));
            }
            (Some(e.step_id.to_string()), parts.join("  "))
        }
        JobEvent::StepCompleted(e) => {
            let mut text = vec!["done".to_string()];
            text.extend(pictures(e));
            (Some(e.step_id.to_string()), text.join("  "))
        }
        JobEvent::StepFailed(e) => (
            Some(e.step_id.to_string()),
            format!("failed: {} ({})", e.error.message, e.error.kind),
        ),
        JobEvent::LeaseExpired(e) => (
            Some(e.step_id.to_string()),
            format!("lost its executor {}", e.executor_id),
        ),
        JobEvent::StepRetried(e) => (
            Some(e.step_id.to_string()),
            format!(
                "retry {} of {} in {:.1}s",
                e.next_attempt,
                e.max_attempts,
                e.backoff_ms as f64 / 1000.0
            ),
        ),
        JobEvent::ReviewRequested(e) => {
            let epochs: Vec<String> = e
                .epochs
                .iter()
                .map(|ep| match (ep.validation_loss, ep.loss) {
                    (Some(v), _) => format!("{} (validation loss {v:.4})", entry_name(ep)),
                    (None, Some(l)) => format!("{} (loss {l:.4})", entry_name(ep)),
                    (None, None) => entry_name(ep),
                })
                .collect();
            let suggested = suggestion(&e.epochs)
                .map(|s| format!("; suggested {s}"))
                .unwrap_or_default();
            (
                Some(e.step_id.to_string()),
                format!("ready for review: {}{suggested}", epochs.join(", ")),
            )
        }
        JobEvent::JobApproved(e) => (None, approved(e)),
        JobEvent::JobPublished(e) => (
            None,
            format!("published epoch {} at {}", e.epoch, e.artifact.uri),
        ),
        JobEvent::JobRejected(_) | JobEvent::JobFailed(_) | JobEvent::JobCancelled(_) => {
            let step = match event {
                JobEvent::JobFailed(e) => e.step_id.as_ref().map(ToString::to_string),
                _ => None,
            };
            (step, failure(event).unwrap_or_default())
        }
    }
}

/// A reviewable entry in words: `epoch 3`, or `step 25 (on request)`.
pub fn entry_name(e: &EpochOutput) -> String {
    match (e.requested, e.step) {
        (true, Some(step)) => format!("step {step} (on request, in epoch {})", e.epoch),
        _ => format!("epoch {}", e.epoch),
    }
}

/// The epoch suggested among `epochs` (saved at epochs' ends), and why:
/// `epoch 4: lowest validation loss 0.113 of 5 saved epochs`.
pub fn suggestion(epochs: &[EpochOutput]) -> Option<String> {
    Suggestion::among(epochs.iter().filter(|e| !e.requested)).map(|s| s.reason())
}

/// An approval in words, naming the step when the reviewer chose by step.
pub fn approved(e: &JobApproved) -> String {
    match e.step {
        Some(step) => format!(
            "approved the LoRA saved at step {step} (epoch {}) by {}",
            e.epoch, e.approved_by
        ),
        None => format!("approved epoch {} by {}", e.epoch, e.approved_by),
    }
}

/// How the job ended, when `event` ends it badly: the reason and the
/// message (`failed (retries_exhausted): ...`, `cancelled by ...: ...`).
/// Where a completed step's pictures are: `loss plot URI`, `contact sheet URI`.
pub fn pictures(e: &loraflow::core::job::events::StepCompleted) -> Vec<String> {
    use loraflow::core::artifact::{CONTACT_SHEET, LOSS_PLOT, report_uri};
    [("loss plot", LOSS_PLOT), ("contact sheet", CONTACT_SHEET)]
        .into_iter()
        .filter_map(|(what, name)| report_uri(&e.artifacts, name).map(|u| format!("{what} {u}")))
        .collect()
}

pub fn failure(event: &JobEvent) -> Option<String> {
    match event {
        JobEvent::JobFailed(e) => Some(format!("failed ({}): {}", e.reason, e.message)),
        JobEvent::JobRejected(e) => Some(format!("rejected by {}: {}", e.rejected_by, e.reason)),
        JobEvent::JobCancelled(e) => Some(format!("cancelled by {}: {}", e.cancelled_by, e.reason)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use loraflow::core::job::canned::histories;

    use super::*;

    fn lines(events: &[JobEvent]) -> Vec<String> {
        let mut plain = PlainLines::default();
        events
            .iter()
            .map(|e| plain.line("2026-12-02T12:00:00Z", e))
            .collect()
    }

    #[test]
    fn each_event_is_one_line_with_time_state_and_step() {
        let lines = lines(&histories::published());
        assert!(lines[0].starts_with("2026-12-02T12:00:00Z  pending "));
        assert!(lines[0].contains("created job"));
        assert!(
            lines.iter().any(|l| l.contains(" processing ")
                && l.contains(" validate ")
                && l.contains("running on")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" in_review ") && l.contains("ready for review")),
            "{lines:#?}"
        );
        let last = lines.last().unwrap();
        assert!(last.contains(" published ") && last.contains("published epoch 2"));
    }

    #[test]
    fn a_job_that_ends_badly_says_why() {
        let events = histories::cancelled_while_training();
        let last = events.last().unwrap();
        assert_eq!(
            failure(last).as_deref(),
            Some("cancelled by alice: wrong dataset")
        );
        assert!(lines(&events).last().unwrap().contains(" failed "));
        let rejected = histories::rejected();
        assert_eq!(
            failure(rejected.last().unwrap()).as_deref(),
            Some("rejected by reviewer@acme: the samples are blurry")
        );
        assert_eq!(failure(&histories::created()[0]), None);
    }
}
