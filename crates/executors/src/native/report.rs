//! The loss history of a run (`loss_history.json`): every step's loss and learning rate, the
//! epoch means, the saved LoRAs, the validation losses and, once known, the approved epoch.
//! It holds everything [`loss_plot`](super::loss_plot) draws, so the plot can be drawn again
//! from the JSON alone (for example with the approved epoch highlighted).

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// One optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLoss {
    /// 1-based step.
    pub step: usize,
    /// Epoch of the step.
    pub epoch: usize,
    /// Mean loss of the step.
    pub loss: f32,
    /// Learning rate of the UNet adapters at the step.
    #[serde(default)]
    pub learning_rate: Option<f64>,
}

/// The mean training loss of a finished epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean loss of its steps.
    pub mean_loss: f32,
}

/// A saved LoRA: where the plot marks an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SavedMark {
    /// The epoch it was saved at.
    pub epoch: usize,
    /// Optimiser steps done when it was saved.
    pub step: usize,
}

/// A validation loss measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidationMark {
    /// Epoch (0: the base model before training).
    pub epoch: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// Loss on the held-out images.
    pub loss: f32,
}

/// The loss history of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LossHistory {
    /// Every step.
    pub steps: Vec<StepLoss>,
    /// Mean loss per finished epoch.
    pub epochs: Vec<EpochLoss>,
    /// The LoRAs saved at epoch ends.
    #[serde(default)]
    pub saved: Vec<SavedMark>,
    /// Validation losses, the base model's first.
    #[serde(default)]
    pub validation: Vec<ValidationMark>,
    /// The epoch a reviewer approved, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_epoch: Option<usize>,
}

/// Decay of the plotted moving average (TensorBoard's default smoothing is 0.6; a little more
/// suits the few hundred noisy steps of a LoRA run).
pub const EMA_DECAY: f64 = 0.9;

impl LossHistory {
    /// The history as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the history serialises")
    }

    /// A history written by [`to_json`](Self::to_json).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::param("loss_history", format!("not a loss history: {e}")))
    }

    /// The bias-corrected exponential moving average of the step losses (as the trainer's
    /// progress reports it), one value per step; non-finite losses are skipped.
    pub fn smoothed(&self) -> Vec<(usize, f32)> {
        let mut ema = (0.0f64, 0i32);
        self.steps
            .iter()
            .filter(|s| s.loss.is_finite())
            .map(|s| {
                ema = (
                    EMA_DECAY * ema.0 + (1.0 - EMA_DECAY) * s.loss as f64,
                    ema.1 + 1,
                );
                (s.step, (ema.0 / (1.0 - EMA_DECAY.powi(ema.1))) as f32)
            })
            .collect()
    }

    /// The last step of `epoch`, if any step of it was recorded.
    pub fn last_step_of(&self, epoch: usize) -> Option<usize> {
        self.steps
            .iter()
            .rfind(|s| s.epoch == epoch)
            .map(|s| s.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_round_trips_and_the_average_follows_the_loss() {
        let history = LossHistory {
            steps: (1..=20)
                .map(|i| StepLoss {
                    step: i,
                    epoch: 1 + (i - 1) / 10,
                    loss: 1.0 / i as f32,
                    learning_rate: Some(1e-3),
                })
                .collect(),
            epochs: vec![
                EpochLoss {
                    epoch: 1,
                    mean_loss: 0.3,
                },
                EpochLoss {
                    epoch: 2,
                    mean_loss: 0.07,
                },
            ],
            saved: vec![SavedMark { epoch: 1, step: 10 }],
            validation: vec![ValidationMark {
                epoch: 0,
                step: 0,
                loss: 0.5,
            }],
            approved_epoch: Some(1),
        };
        let back = LossHistory::from_json(history.to_json().as_bytes()).unwrap();
        assert_eq!(back, history);
        let s = history.smoothed();
        assert_eq!(
            s[0],
            (1, 1.0),
            "bias-corrected: the first value is the first loss"
        );
        assert!(s[19].1 < s[5].1 && s[19].1 > 0.05);
        assert_eq!(history.last_step_of(1), Some(10));
        assert!(LossHistory::from_json(b"[]").is_err());
    }
}
