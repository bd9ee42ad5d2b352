//! Reading sd-scripts' console output: which lines mean what, and the
//! [`StepProgress`] they add up to.
//!
//! The lines recognised, from `train_network.py` (NetworkTrainer.train) at
//! kohya-ss/sd-scripts@0010c81a3353b6bb51e698ca649442e730817a8f:
//!
//! ```python
//! accelerator.print(f"  num epochs / epoch数: {num_train_epochs}")
//! accelerator.print(f"  total optimization steps / 学習ステップ数: {args.max_train_steps}")
//! progress_bar = tqdm(range(args.max_train_steps - initial_step), smoothing=0,
//!                     disable=not accelerator.is_local_main_process, desc="steps")
//! accelerator.print(f"\nepoch {epoch+1}/{num_train_epochs}\n")
//! logs = {"avr_loss": avr_loss}
//! progress_bar.set_postfix(**{**max_mean_logs, **logs})
//! accelerator.print(f"\nsaving checkpoint: {ckpt_file}")
//! ```
//!
//! `sdxl_train_network.py` and `flux_train_network.py` subclass
//! `train_network.NetworkTrainer` (`class SdxlNetworkTrainer(train_network.NetworkTrainer)`,
//! `class FluxNetworkTrainer(train_network.NetworkTrainer)`) and print through
//! the same training loop.
//!
//! The progress bar is tqdm's default format (tqdm/std.py `format_meter`):
//! `'{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]'`,
//! where `rate_fmt` is `'{0:5.2f}'.format(rate) + 'it/s'`, or
//! `'{0:5.2f}'.format(1 / rate) + 's/it'` when a step takes more than a
//! second, or `'?it/s'` before the first step, and the postfix is
//! `', ' + 'avr_loss=' + format_num(avr_loss)` (`'{0:.3g}'`). tqdm redraws
//! the bar in place: each update is written as `'\r' + line`, so output is
//! split on `\r` as well as `\n` (see [`LineSplitter`]). Bars with another
//! description ("validation steps", latents caching) are not training
//! progress and are ignored, except the last redraw of the "epoch validation
//! steps" bar that `--validation_split` adds after each epoch
//! (`val_progress_bar.set_postfix({"val_epoch_avg_loss": ..., "timestep": ...})`
//! at kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb): its
//! average is the epoch's validation loss.
//!
//! Out-of-memory is PyTorch's message (c10/cuda/CUDACachingAllocator.cpp:
//! `"CUDA out of memory. Tried to allocate "`, raised as
//! `torch.OutOfMemoryError`, formerly `torch.cuda.OutOfMemoryError`) or the
//! CUDA runtime's `"CUDA error: out of memory"`.

use std::collections::BTreeMap;

use loraflow_core::job::StepProgress;

use crate::external::lines::parse_tqdm;
pub use crate::external::lines::{LineSplitter, is_exception, is_out_of_memory};

/// What one line of output says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `  num epochs / epoch数: 3`
    TotalEpochs(u32),
    /// `  total optimization steps / 学習ステップ数: 180`
    TotalSteps(u64),
    /// `epoch 2/3`
    Epoch {
        epoch: u32,
        total: u32,
    },
    /// A redraw of the training progress bar.
    Step(StepLine),
    /// The finished `epoch validation steps` bar: the epoch's validation loss.
    Validation(f64),
    /// `saving checkpoint: /path/corgi-000001.safetensors`
    Saved(String),
    /// CUDA ran out of memory.
    OutOfMemory,
    Other,
}

/// The numbers on one redraw of the `steps` progress bar.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: u64,
    pub total: u64,
    /// Optimiser steps per second; `None` before the first step.
    pub steps_per_sec: Option<f64>,
    /// sd-scripts' moving average of the loss over the last epoch's steps.
    pub avr_loss: Option<f64>,
}

fn number_after_colon<T: std::str::FromStr>(line: &str) -> Option<T> {
    line.rsplit_once(": ")?.1.trim().parse().ok()
}

/// Parse one line (a `\r`- or `\n`-separated segment) of sd-scripts output.
pub fn parse_line(line: &str) -> Line {
    let trimmed = line.trim();
    if is_out_of_memory(trimmed) {
        return Line::OutOfMemory;
    }
    if let Some(step) = parse_step_bar(trimmed) {
        return Line::Step(step);
    }
    if let Some(loss) = parse_validation_bar(trimmed) {
        return Line::Validation(loss);
    }
    if let Some(rest) = trimmed.strip_prefix("epoch ")
        && let Some((e, t)) = rest.split_once('/')
        && let (Ok(epoch), Ok(total)) = (e.parse(), t.parse())
    {
        return Line::Epoch { epoch, total };
    }
    if let Some(path) = trimmed.strip_prefix("saving checkpoint: ") {
        return Line::Saved(path.to_owned());
    }
    if trimmed.starts_with("num epochs / ")
        && let Some(n) = number_after_colon(trimmed)
    {
        return Line::TotalEpochs(n);
    }
    if trimmed.starts_with("total optimization steps / ")
        && let Some(n) = number_after_colon(trimmed)
    {
        return Line::TotalSteps(n);
    }
    Line::Other
}

/// `steps:  34%|███▍      | 61/180 [00:31<01:01,  1.93it/s, avr_loss=0.121]`
fn parse_step_bar(line: &str) -> Option<StepLine> {
    let bar = parse_tqdm(line).filter(|b| b.desc == "steps")?;
    let avr_loss = bar
        .postfix
        .split(", ")
        .filter_map(|part| part.trim().strip_prefix("avr_loss="))
        .filter_map(|v| v.parse::<f64>().ok().filter(|l| l.is_finite()))
        .last();
    Some(StepLine {
        step: bar.n,
        total: bar.total,
        steps_per_sec: bar.rate,
        avr_loss,
    })
}

/// `epoch validation steps: 100%|██████████| 8/8 [00:02<00:00, 3.9it/s, val_epoch_avg_loss=0.114, timestep=800]`
/// when the bar is complete.
fn parse_validation_bar(line: &str) -> Option<f64> {
    let bar = parse_tqdm(line).filter(|b| b.desc == "epoch validation steps")?;
    if bar.n < bar.total {
        return None;
    }
    bar.postfix
        .split(", ")
        .filter_map(|part| part.trim().strip_prefix("val_epoch_avg_loss="))
        .filter_map(|v| v.parse::<f64>().ok().filter(|l| l.is_finite()))
        .last()
}

/// Folds parsed lines into progress reports and per-epoch losses.
#[derive(Debug, Clone, Default)]
pub struct ProgressTracker {
    samples_per_step: u32,
    epoch: Option<u32>,
    total_epochs: Option<u32>,
    total_steps: Option<u64>,
    last: Option<StepLine>,
    /// The last average loss seen in each epoch. sd-scripts' LossRecorder
    /// keeps one slot per step of an epoch, so by an epoch's last step its
    /// moving average is that epoch's mean loss.
    epoch_loss: BTreeMap<u32, f64>,
    /// The validation loss measured after each epoch.
    validation_loss: BTreeMap<u32, f64>,
    saved: Vec<String>,
}

impl ProgressTracker {
    /// A tracker for a run with `samples_per_step` images per optimiser step.
    pub fn new(samples_per_step: u32) -> Self {
        Self {
            samples_per_step: samples_per_step.max(1),
            ..Self::default()
        }
    }

    /// Take in one parsed line; returns a report when progress moved.
    pub fn observe(&mut self, line: &Line) -> Option<StepProgress> {
        match line {
            Line::TotalEpochs(n) => {
                self.total_epochs = Some(*n);
                None
            }
            Line::TotalSteps(n) => {
                self.total_steps = Some(*n);
                Some(self.current("training started"))
            }
            Line::Epoch { epoch, total } => {
                self.epoch = Some(*epoch);
                self.total_epochs = Some(*total);
                Some(self.current(&format!("epoch {epoch}/{total}")))
            }
            Line::Step(s) => {
                self.total_steps = Some(s.total);
                if s.step > 0 {
                    self.epoch = self.epoch_of(s.step).or(self.epoch);
                    if let (Some(epoch), Some(loss)) = (self.epoch, s.avr_loss) {
                        self.epoch_loss.insert(epoch, loss);
                    }
                }
                self.last = Some(s.clone());
                let message = match (self.epoch, self.total_epochs) {
                    (Some(e), Some(t)) => format!("epoch {e}/{t}"),
                    _ => "training".to_owned(),
                };
                Some(self.current(&message))
            }
            Line::Validation(loss) => {
                let epoch = self.epoch?;
                self.validation_loss.insert(epoch, *loss);
                Some(self.current(&format!("epoch {epoch} validation loss {loss:.4}")))
            }
            Line::Saved(path) => {
                self.saved.push(path.clone());
                let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
                Some(self.current(&format!("saved {name}")))
            }
            Line::OutOfMemory | Line::Other => None,
        }
    }

    /// The epoch a step belongs to, from the step count rather than the
    /// `epoch N/M` line: that line is on stdout and the bar on stderr, and
    /// two pipes give no order between them. With `max_train_epochs`,
    /// sd-scripts trains the same number of steps every epoch
    /// (`max_train_steps = max_train_epochs * ceil(batches / accumulation)`).
    fn epoch_of(&self, step: u64) -> Option<u32> {
        let epochs = u64::from(self.total_epochs?);
        let total = self.total_steps?;
        if epochs == 0 || total == 0 || total % epochs != 0 {
            return None;
        }
        u32::try_from((step.min(total) - 1) / (total / epochs) + 1).ok()
    }

    /// Progress as of now, with `message`.
    pub fn current(&self, message: &str) -> StepProgress {
        let total = self.last.as_ref().map(|s| s.total).or(self.total_steps);
        let step = self.last.as_ref().map(|s| s.step);
        let percent = match (step, total) {
            (Some(s), Some(t)) if t > 0 => (s.min(t) as f64 * 100.0 / t as f64) as f32,
            _ => 0.0,
        };
        StepProgress {
            percent,
            epoch: self.epoch,
            step: step.map(|s| total.map_or(s, |t| s.min(t))),
            total_steps: total,
            loss: self.last.as_ref().and_then(|s| s.avr_loss),
            samples_per_sec: self
                .last
                .as_ref()
                .and_then(|s| s.steps_per_sec)
                .map(|r| r * f64::from(self.samples_per_step)),
            validation_loss: self.validation_loss.values().last().copied(),
            message: Some(message.to_owned()),
            ..StepProgress::default()
        }
    }

    /// The validation loss measured after `epoch`, if sd-scripts showed one.
    pub fn validation_loss(&self, epoch: u32) -> Option<f64> {
        self.validation_loss.get(&epoch).copied()
    }

    /// The mean training loss of `epoch`, if the output showed one.
    pub fn epoch_loss(&self, epoch: u32) -> Option<f64> {
        self.epoch_loss.get(&epoch).copied()
    }

    /// The number of epochs sd-scripts said it would train, if it said.
    pub fn total_epochs(&self) -> Option<u32> {
        self.total_epochs
    }

    /// Checkpoint paths in the order sd-scripts reported saving them.
    pub fn saved(&self) -> &[String] {
        &self.saved
    }

    /// The latest progress bar read, if any.
    pub fn last_step(&self) -> Option<&StepLine> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rate_formats_and_the_first_bar() {
        let slow = parse_line("steps:   1%|          | 1/180 [00:03<10:08,  3.40s/it]");
        let Line::Step(s) = slow else {
            panic!("{slow:?}")
        };
        assert_eq!((s.step, s.total, s.avr_loss), (1, 180, None));
        assert!((s.steps_per_sec.unwrap() - 1.0 / 3.4).abs() < 1e-9);
        let first = parse_line("steps:   0%|          | 0/180 [00:00<?, ?it/s]");
        assert_eq!(
            first,
            Line::Step(StepLine {
                step: 0,
                total: 180,
                steps_per_sec: None,
                avr_loss: None
            })
        );
    }

    #[test]
    fn other_bars_and_lookalikes_are_not_training_progress() {
        for line in [
            "validation steps:  50%|█████     | 2/4 [00:01<00:01,  1.90it/s, val_avg_loss=0.1]",
            "100%|██████████| 12/12 [00:03<00:00,  3.71it/s]",
            "epoch validation steps: 100%|██████████| 4/4 [00:02<00:00,  1.99it/s]",
            "epoch is not a number/3",
        ] {
            assert_eq!(parse_line(line), Line::Other, "{line}");
        }
    }

    #[test]
    fn the_finished_epoch_validation_bar_gives_the_epochs_validation_loss() {
        let done = "epoch validation steps: 100%|██████████| 8/8 [00:02<00:00,  3.90it/s, val_epoch_avg_loss=0.114, timestep=800]";
        assert_eq!(parse_line(done), Line::Validation(0.114));
        let midway = "epoch validation steps:  50%|█████     | 4/8 [00:01<00:01,  3.90it/s, val_epoch_avg_loss=0.2, timestep=400]";
        assert_eq!(parse_line(midway), Line::Other);
        let mut t = ProgressTracker::new(2);
        t.observe(&parse_line("  num epochs / epoch数: 2"));
        t.observe(&parse_line(
            "steps:  50%|█████     | 5/10 [00:05<00:05,  1.00it/s, avr_loss=0.3]",
        ));
        let p = t.observe(&parse_line(done)).unwrap();
        assert_eq!(p.validation_loss, Some(0.114));
        assert_eq!(t.validation_loss(1), Some(0.114));
        assert_eq!(t.validation_loss(2), None);
    }

    #[test]
    fn python_exception_lines_are_recognised() {
        assert!(is_exception("ImportError: No bitsandbytes"));
        assert!(is_exception("torch.OutOfMemoryError: CUDA out of memory."));
        assert!(!is_exception("  File \"x.py\", line 3, in <module>"));
        assert!(!is_exception("saving checkpoint: /x"));
    }
}
