//! Reading ai-toolkit's console output: which lines mean what, and the
//! [`StepProgress`] they add up to.
//!
//! The lines recognised, from `jobs/process/BaseSDTrainProcess.py` and
//! `run.py` at ostris/ai-toolkit@27a03a91f23eb1b757d5ec2e80ee3e129cfcc350:
//!
//! ```python
//! self.progress_bar = ToolkitProgressBar(total=self.train_config.steps, desc=self.job.name,
//!                                        leave=True, initial=self.step_num, ...)   # a tqdm
//! prog_bar_string = f"lr: {learning_rate:.1e}"
//! for key, value in loss_dict.items():                 # SDTrainer: {'loss': ...}
//!     prog_bar_string += f" {key}: {value:.3e}"
//! self.progress_bar.set_postfix_str(prog_bar_string)
//! print_acc(f"\nSaving at step {self.step_num}")
//! print_acc(f"Saved checkpoint to {file_path}")
//! print_acc(f"# OOM during training step, skipping batch {self.num_consecutive_oom}/3 #")
//! raise RuntimeError("OOM during training step 3 times in a row, aborting training")
//! print_acc(f"Error running job: {e}")                  # run.py, before re-raising
//! ```
//!
//! so a redraw of the training bar reads
//! `corgi:  33%|███▎      | 15/45 [00:31<01:02,  2.08s/it, lr: 1.0e-04 loss: 4.123e-01]`
//! (tqdm's format; see [`crate::external::lines`]). Only the bar whose
//! description is the job's name is training progress; sampling
//! ("Generating Images") and caching bars are not. ai-toolkit prints no
//! epochs: the epoch of a step comes from the run's [`StepPlan`].

use std::collections::BTreeMap;

use loraflow_core::job::StepProgress;

use super::params::StepPlan;
use crate::external::lines::parse_tqdm;

/// What one line of output says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A redraw of the training progress bar.
    Step(StepLine),
    /// `Saving at step 15`
    Saving(u64),
    /// `Saved checkpoint to /work/output/corgi/corgi_000000015.safetensors`
    Saved(String),
    /// `Error running job: ...`: the exception that ended the run.
    JobError(String),
    Other,
}

/// The numbers on one redraw of the training bar.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: u64,
    pub total: u64,
    /// Steps per second; `None` before the first step.
    pub steps_per_sec: Option<f64>,
    pub lr: Option<f64>,
    /// The last step's loss.
    pub loss: Option<f64>,
}

/// Parse one line (a `\r`- or `\n`-separated segment) of ai-toolkit output
/// for the job named `name`.
pub fn parse_line(line: &str, name: &str) -> Line {
    let trimmed = line.trim();
    if let Some(bar) = parse_tqdm(trimmed).filter(|b| b.desc == name) {
        let mut lr = None;
        let mut loss = None;
        let mut words = bar.postfix.split_whitespace();
        while let Some(key) = words.next() {
            let value = words
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite());
            match key {
                "lr:" => lr = value,
                "loss:" => loss = value,
                _ => {}
            }
        }
        return Line::Step(StepLine {
            step: bar.n,
            total: bar.total,
            steps_per_sec: bar.rate,
            lr,
            loss,
        });
    }
    if let Some(n) = trimmed
        .strip_prefix("Saving at step ")
        .and_then(|n| n.parse().ok())
    {
        return Line::Saving(n);
    }
    if let Some(path) = trimmed.strip_prefix("Saved checkpoint to ") {
        return Line::Saved(path.to_owned());
    }
    if let Some(e) = trimmed.strip_prefix("Error running job: ") {
        return Line::JobError(e.to_owned());
    }
    Line::Other
}

/// Folds parsed lines into progress reports and per-epoch losses.
#[derive(Debug, Clone)]
pub struct ProgressTracker {
    plan: StepPlan,
    samples_per_step: u32,
    last: Option<StepLine>,
    /// Per epoch: the loss of each step seen (tqdm redraws at most ten times
    /// a second, so not every step is seen).
    losses: BTreeMap<u32, BTreeMap<u64, f64>>,
    saved: Vec<String>,
    job_error: Option<String>,
}

impl ProgressTracker {
    pub fn new(plan: StepPlan, samples_per_step: u32) -> Self {
        Self {
            plan,
            samples_per_step: samples_per_step.max(1),
            last: None,
            losses: BTreeMap::new(),
            saved: Vec::new(),
            job_error: None,
        }
    }

    /// Take in one parsed line; returns a report when progress moved.
    pub fn observe(&mut self, line: &Line) -> Option<StepProgress> {
        match line {
            Line::Step(s) => {
                if s.step > 0
                    && let Some(loss) = s.loss
                {
                    self.losses
                        .entry(self.plan.epoch_of_step(s.step))
                        .or_default()
                        .insert(s.step, loss);
                }
                self.last = Some(s.clone());
                let message = match (s.step, s.lr) {
                    (0, _) => "training started".to_owned(),
                    (n, Some(lr)) => format!(
                        "epoch {}/{}, lr {lr:.1e}",
                        self.plan.epoch_of_step(n),
                        self.plan.epochs
                    ),
                    (n, None) => {
                        format!("epoch {}/{}", self.plan.epoch_of_step(n), self.plan.epochs)
                    }
                };
                Some(self.current(&message))
            }
            Line::Saving(step) => Some(self.current(&format!("saving at step {step}"))),
            Line::Saved(path) => {
                self.saved.push(path.clone());
                let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
                Some(self.current(&format!("saved {name}")))
            }
            Line::JobError(e) => {
                self.job_error = Some(e.clone());
                None
            }
            Line::Other => None,
        }
    }

    /// Progress as of now, with `message`.
    pub fn current(&self, message: &str) -> StepProgress {
        let total = self.last.as_ref().map_or(self.plan.steps, |s| s.total);
        let step = self.last.as_ref().map(|s| s.step.min(total));
        let percent = match step {
            Some(s) if total > 0 => (s as f64 * 100.0 / total as f64) as f32,
            _ => 0.0,
        };
        StepProgress {
            percent,
            epoch: step.filter(|s| *s > 0).map(|s| self.plan.epoch_of_step(s)),
            step,
            total_steps: Some(total),
            loss: self.last.as_ref().and_then(|s| s.loss),
            samples_per_sec: self
                .last
                .as_ref()
                .and_then(|s| s.steps_per_sec)
                .map(|r| r * f64::from(self.samples_per_step)),
            message: Some(message.to_owned()),
            ..Default::default()
        }
    }

    /// The mean of the step losses seen in `epoch`.
    pub fn epoch_loss(&self, epoch: u32) -> Option<f64> {
        let losses = self.losses.get(&epoch)?;
        (!losses.is_empty()).then(|| losses.values().sum::<f64>() / losses.len() as f64)
    }

    /// Checkpoint paths in the order ai-toolkit reported saving them.
    pub fn saved(&self) -> &[String] {
        &self.saved
    }

    /// The exception run.py reported, if any.
    pub fn job_error(&self) -> Option<&str> {
        self.job_error.as_deref()
    }

    pub fn last_step(&self) -> Option<&StepLine> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_bar_is_read_and_other_bars_are_not() {
        let line =
            "corgi:  33%|███▎      | 15/45 [00:31<01:02,  2.08s/it, lr: 1.0e-04 loss: 4.123e-01]";
        let Line::Step(s) = parse_line(line, "corgi") else {
            panic!("{line}")
        };
        assert_eq!(
            (s.step, s.total, s.lr, s.loss),
            (15, 45, Some(1e-4), Some(0.4123))
        );
        assert!((s.steps_per_sec.unwrap() - 1.0 / 2.08).abs() < 1e-9);
        for other in [
            "Generating Images:  50%|█████     | 1/2 [00:03<00:03,  3.01s/it]",
            "Caching latents to disk: 100%|██████████| 3/3 [00:01<00:00,  2.50it/s]",
            "corgi2:  33%|███▎      | 15/45 [00:31<01:02,  2.08s/it]",
        ] {
            assert_eq!(parse_line(other, "corgi"), Line::Other, "{other}");
        }
        assert_eq!(parse_line("Saving at step 15", "corgi"), Line::Saving(15));
        assert_eq!(
            parse_line("Error running job: boom", "corgi"),
            Line::JobError("boom".into())
        );
    }

    #[test]
    fn epochs_and_their_mean_loss_come_from_the_plan() {
        let plan = StepPlan {
            epochs: 3,
            steps_per_epoch: 10,
            steps: 30,
            save_every: 10,
        };
        let mut t = ProgressTracker::new(plan, 2);
        for (step, loss) in [(5, 0.5), (10, 0.3), (10, 0.3), (15, 0.2)] {
            let line = format!(
                "corgi:  50%|█████     | {step}/30 [00:10<00:10,  2.00it/s, lr: 1.0e-04 loss: {loss:.3e}]"
            );
            t.observe(&parse_line(&line, "corgi"));
        }
        assert_eq!(t.epoch_loss(1), Some(0.4));
        assert_eq!(t.epoch_loss(2), Some(0.2));
        let p = t.current("x");
        assert_eq!(
            (p.epoch, p.step, p.total_steps),
            (Some(2), Some(15), Some(30))
        );
        assert_eq!(p.percent, 50.0);
        assert_eq!(p.samples_per_sec, Some(4.0));
    }
}
