//! Learning-rate schedules, as diffusers' `get_scheduler` (which sd-scripts uses) defines them.

use serde::{Deserialize, Serialize};

/// The shape of the schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduleKind {
    /// Constant (`constant`, or `constant_with_warmup` with warm-up steps).
    #[default]
    Constant,
    /// Linear decay to zero at the last step.
    Linear,
    /// Half a cosine wave down to zero at the last step.
    Cosine,
}

/// A schedule: linear warm-up from 0, then `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// The decay after warm-up.
    #[serde(default)]
    pub kind: LrScheduleKind,
    /// Steps of linear warm-up.
    #[serde(default)]
    pub warmup_steps: usize,
}

impl LrSchedule {
    /// The multiplier of the base learning rate for optimiser step `step` (0-based) of `total`.
    ///
    /// As in diffusers, warm-up starts at 0 (`step / warmup`), and the decay reaches 0 at
    /// `step == total`.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, total as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let progress = (step - warmup) / (total - warmup).max(1.0);
        match self.kind {
            LrScheduleKind::Constant => 1.0,
            LrScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            LrScheduleKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// sd-scripts' name of the schedule (`ss_lr_scheduler`).
    pub fn name(&self) -> &'static str {
        match (self.kind, self.warmup_steps > 0) {
            (LrScheduleKind::Constant, false) => "constant",
            (LrScheduleKind::Constant, true) => "constant_with_warmup",
            (LrScheduleKind::Linear, _) => "linear",
            (LrScheduleKind::Cosine, _) => "cosine",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule {
            kind: LrScheduleKind::Linear,
            warmup_steps: 10,
        };
        assert_eq!(s.factor(0, 110), 0.0);
        assert_eq!(s.factor(5, 110), 0.5);
        assert_eq!(s.factor(10, 110), 1.0);
        assert!((s.factor(60, 110) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(110, 110), 0.0);
    }

    #[test]
    fn cosine_is_half_a_wave() {
        let s = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 0,
        };
        assert_eq!(s.factor(0, 100), 1.0);
        assert!((s.factor(50, 100) - 0.5).abs() < 1e-12);
        assert!(s.factor(100, 100).abs() < 1e-12);
        assert_eq!(LrSchedule::default().factor(77, 100), 1.0);
    }
}
