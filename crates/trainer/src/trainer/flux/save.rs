//! Kohya Flux LoRA files and training states of a Flux run, and resuming from a state.

use std::path::PathBuf;

use super::super::checkpoint::{
    TrainingState, read_state, restore, save_state, sha256_file, state_dir, unix_now,
};
use super::super::run::Position;
use super::super::{ProgressEvent, ProgressSink, SaveReason, SavedLora};
use super::{FluxRun, IDS};
use crate::error::{Error, Result};
use crate::flux::lora::{KOHYA_PREFIX, save_flux_kohya};
use crate::lora::{LoraLayers, set_stable_ids};

impl FluxRun<'_> {
    /// Continues from a state folder; returns the step it resumes at.
    pub(super) fn resume(
        &mut self,
        path: &std::path::Path,
        sink: &mut dyn ProgressSink,
    ) -> Result<usize> {
        let (dir, state) = read_state(path, self.cfg, &self.dataset_digest)?;
        let optim = std::mem::replace(&mut self.optim, self.cfg.optimizer.build());
        let (optim, _) = restore(
            &dir,
            &mut [(KOHYA_PREFIX, &mut self.transformer as &mut dyn LoraLayers)],
            (optim, None),
            &self.device,
        )?;
        self.optim = optim;
        // Restored factors are new parameters; give them their stable ids again.
        set_stable_ids(&mut self.transformer, IDS);
        let parse = |s: &str| {
            s.parse::<u128>().map_err(|e| Error::Parse {
                path: dir.join("state.json"),
                reason: format!("stream position {s:?}: {e}"),
            })
        };
        self.noise_rng.set_word_pos(parse(&state.noise_pos)?);
        self.caption_rng.set_word_pos(parse(&state.caption_pos)?);
        self.validations = state.validation;
        self.pos = Position {
            step: state.step,
            epoch: state.epoch,
            batch: state.batch,
            epoch_shuffle_pos: parse(&state.epoch_shuffle_pos)?,
            losses: state.losses,
            epoch_losses: state.epoch_losses,
            epoch_loss: state.epoch_loss,
        };
        sink.report(ProgressEvent::Resumed {
            step: self.pos.step,
            epoch: self.pos.epoch,
        });
        Ok(self.pos.step)
    }

    /// The training state at the current position.
    fn state(&self) -> TrainingState {
        TrainingState {
            version: 1,
            training_digest: self.cfg.training_digest(),
            dataset_digest: self.dataset_digest.clone(),
            step: self.pos.step,
            epoch: self.pos.epoch,
            batch: self.pos.batch,
            epoch_shuffle_pos: self.pos.epoch_shuffle_pos.to_string(),
            noise_pos: self.noise_rng.word_pos().to_string(),
            caption_pos: self.caption_rng.word_pos().to_string(),
            losses: self.pos.losses.clone(),
            epoch_losses: self.pos.epoch_losses.clone(),
            epoch_loss: self.pos.epoch_loss,
            validation: self.validations.clone(),
        }
    }

    /// Writes a kohya Flux LoRA file (and the state beside it) labelled with `epoch`.
    pub(super) fn save_as(
        &mut self,
        path: PathBuf,
        reason: SaveReason,
        epoch: usize,
        loss: f32,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        let validation_loss = self.validate(epoch, sink)?;
        self.metadata.epoch = epoch;
        self.metadata.steps = self.pos.step;
        self.metadata.training_finished_at = unix_now();
        save_flux_kohya(
            &mut self.transformer,
            &path,
            &self.metadata,
            self.cfg.output.dtype,
        )?;
        let sha256 = sha256_file(&path)?;
        let state = if self.cfg.output.save_state {
            let dir = state_dir(&path);
            let state = self.state();
            save_state(
                &dir,
                &mut [(KOHYA_PREFIX, &mut self.transformer as &mut dyn LoraLayers)],
                (&self.optim, None),
                &state,
            )?;
            Some(dir)
        } else {
            None
        };
        let entry = SavedLora {
            epoch,
            step: self.pos.step,
            path,
            sha256,
            loss,
            state,
            reason,
            validation_loss,
        };
        sink.report(ProgressEvent::Saved(entry.clone()));
        self.saved.push(entry);
        Ok(())
    }
}
