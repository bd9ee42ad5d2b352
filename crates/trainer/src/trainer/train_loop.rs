//! The training loop both runs share (the UNet run and the Flux run): epochs of shuffled
//! batches, accumulation groups, cancel / `save_now` / `sample_now` between steps, progress, and
//! a LoRA and samples at the end of the epochs the configuration asks for.

use std::path::PathBuf;
use std::time::Instant;

use super::run::Position;
use super::{CancelSignal, ProgressEvent, ProgressSink, SaveReason, StepProgress};
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::train::config::{SampleConfig, TrainConfig};
use crate::train::examples::TrainingSet;

/// What the loop asks of a run.
pub(super) trait TrainLoop<'a> {
    fn cfg(&self) -> &'a TrainConfig;
    fn pos(&mut self) -> &mut Position;
    /// Steps and epochs planned.
    fn totals(&self) -> (usize, usize);
    /// The training set and the generator that shuffles it.
    fn shuffling(&mut self) -> (&TrainingSet, &mut SeededRng);
    /// One optimiser step over an accumulation group: loss, learning rate, gradient norm.
    fn optimizer_step(&mut self, group: &[Vec<usize>]) -> Result<(f32, f64, f64)>;
    /// Writes a LoRA file (and the state beside it) labelled with `epoch`.
    fn write_lora(
        &mut self,
        path: PathBuf,
        reason: SaveReason,
        epoch: usize,
        loss: f32,
        sink: &mut dyn ProgressSink,
    ) -> Result<()>;
    /// Renders `asked` (a request's settings) or the run's own prompts, labelled with `epoch`.
    fn render(
        &mut self,
        epoch: usize,
        asked: Option<&SampleConfig>,
        sink: &mut dyn ProgressSink,
    ) -> Result<()>;

    /// Writes a LoRA file at the current position, labelled with the epoch's mean loss so far
    /// (the last finished epoch's when the current one has no step yet).
    fn save(
        &mut self,
        path: PathBuf,
        reason: SaveReason,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        let pos = self.pos();
        let (sum, n) = pos.epoch_loss;
        let loss = if n > 0 {
            (sum / n as f64) as f32
        } else {
            pos.epoch_losses.last().copied().unwrap_or(f32::NAN)
        };
        let epoch = pos.epoch;
        self.write_lora(path, reason, epoch, loss, sink)
    }
}

/// Runs `run` from its position to its last step.
pub(super) fn train<'a>(
    run: &mut impl TrainLoop<'a>,
    sink: &mut dyn ProgressSink,
    cancel: &dyn CancelSignal,
) -> Result<()> {
    let cfg = run.cfg();
    let (total_steps, total_epochs) = run.totals();
    let run_start = Instant::now();
    let (start_step, mut examples) = (run.pos().step, 0usize);
    let mut ema = (0.0f64, 0i32);
    while run.pos().step < total_steps {
        let shuffle_pos = run.pos().epoch_shuffle_pos;
        let (set, shuffle_rng) = run.shuffling();
        shuffle_rng.set_word_pos(shuffle_pos);
        let plan = set.epoch_batches(cfg.batch_size, shuffle_rng);
        let next_epoch_pos = shuffle_rng.word_pos();
        let remaining: Vec<Vec<usize>> = plan[run.pos().batch.min(plan.len())..].to_vec();
        for group in remaining.chunks(cfg.gradient_accumulation_steps) {
            if run.pos().step >= total_steps {
                break;
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    completed_steps: run.pos().step,
                });
            }
            if cancel.take_save_now() {
                let path = cfg.output.dir.join(format!(
                    "{}-step{:08}.safetensors",
                    cfg.output.name,
                    run.pos().step
                ));
                run.save(path, SaveReason::Requested, sink)?;
            }
            if cancel.take_sample_now() {
                let asked = cancel.take_sample_config();
                let epoch = run.pos().epoch;
                run.render(epoch, asked.as_ref(), sink)?;
            }
            let step_start = Instant::now();
            let (loss, learning_rate, grad_norm) = run.optimizer_step(group)?;
            let pos = run.pos();
            pos.batch += group.len();
            pos.step += 1;
            pos.losses.push(loss);
            pos.epoch_loss.0 += loss as f64;
            pos.epoch_loss.1 += 1;
            examples += group.iter().map(Vec::len).sum::<usize>();
            ema = (0.9 * ema.0 + 0.1 * loss as f64, ema.1 + 1);
            let elapsed = run_start.elapsed();
            let done = pos.step - start_step;
            sink.report(ProgressEvent::Step(StepProgress {
                step: pos.step,
                total_steps,
                epoch: pos.epoch,
                total_epochs,
                loss,
                smoothed_loss: (ema.0 / (1.0 - 0.9f64.powi(ema.1))) as f32,
                learning_rate,
                grad_norm,
                step_time: step_start.elapsed(),
                samples_per_sec: examples as f64 / elapsed.as_secs_f64().max(1e-9),
                eta: elapsed.mul_f64((total_steps - pos.step) as f64 / done as f64),
            }));
        }
        let pos = run.pos();
        let (sum, n) = pos.epoch_loss;
        let mean = if n > 0 {
            (sum / n as f64) as f32
        } else {
            f32::NAN
        };
        let finished_epoch = pos.epoch;
        if pos.batch >= plan.len() {
            pos.epoch_losses.push(mean);
            sink.report(ProgressEvent::EpochEnd {
                epoch: finished_epoch,
                mean_loss: mean,
            });
        }
        if pos.step >= total_steps {
            break;
        }
        pos.epoch += 1;
        pos.batch = 0;
        pos.epoch_shuffle_pos = next_epoch_pos;
        pos.epoch_loss = (0.0, 0);
        if cfg
            .output
            .save_every_n_epochs
            .is_some_and(|n| finished_epoch.is_multiple_of(n))
        {
            let path = cfg.output.dir.join(format!(
                "{}-{finished_epoch:06}.safetensors",
                cfg.output.name
            ));
            run.write_lora(path, SaveReason::Epoch, finished_epoch, mean, sink)?;
        }
        if let Some(n) = cfg.sample.as_ref().and_then(|s| s.every_n_epochs)
            && finished_epoch.is_multiple_of(n)
        {
            run.render(finished_epoch, None, sink)?;
        }
    }
    Ok(())
}
