//! The loss history of a run, as JSON and as a loss-curve PNG.
//!
//! The curve is drawn with the `image` crate: per-step loss in light blue, its moving average in
//! dark blue, epoch means as orange dots, on a grid with one vertical line per epoch. The axis
//! ranges are written into the PNG's text chunks (the `image` crate draws no text).

use std::path::Path;

use image::{Rgb, RgbImage};
use serde::Serialize;

use super::error::{Error, Result};

/// One step of the history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepLoss {
    /// 1-based step.
    pub step: usize,
    /// Epoch of the step.
    pub epoch: usize,
    /// Mean loss of the step.
    pub loss: f32,
}

/// The loss history of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct LossHistory {
    /// Every step.
    pub steps: Vec<StepLoss>,
    /// Mean loss per finished epoch, 1-based.
    pub epochs: Vec<(usize, f32)>,
}

const W: u32 = 640;
const H: u32 = 360;
const MARGIN: u32 = 32;

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), color: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

fn dot(img: &mut RgbImage, (x, y): (f32, f32), color: Rgb<u8>) {
    for dy in -2i32..=2 {
        for dx in -2i32..=2 {
            if dx * dx + dy * dy <= 5 {
                let (px, py) = (x as i32 + dx, y as i32 + dy);
                if px >= 0 && py >= 0 && (px as u32) < W && (py as u32) < H {
                    img.put_pixel(px as u32, py as u32, color);
                }
            }
        }
    }
}

impl LossHistory {
    /// The history as pretty JSON.
    pub fn to_json(&self) -> String {
        let epochs: Vec<_> = self
            .epochs
            .iter()
            .map(|(e, l)| serde_json::json!({"epoch": e, "mean_loss": l}))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "steps": self.steps,
            "epochs": epochs,
        }))
        .expect("the history serialises")
    }

    /// Draws the loss curve; returns the image and its loss range.
    pub fn draw(&self) -> (RgbImage, (f32, f32)) {
        let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
        let finite: Vec<f32> = self
            .steps
            .iter()
            .map(|s| s.loss)
            .filter(|l| l.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (lo, hi) = if finite.is_empty() {
            (0.0, 1.0)
        } else if hi - lo < 1e-6 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        };
        let (x0, x1) = (MARGIN as f32, (W - MARGIN / 2) as f32);
        let (y0, y1) = ((H - MARGIN) as f32, (MARGIN / 2) as f32);
        let n = self.steps.len().max(2);
        let x_of = |step: f32| x0 + (step - 1.0) / (n - 1) as f32 * (x1 - x0);
        let y_of = |loss: f32| y0 + (loss - lo) / (hi - lo) * (y1 - y0);
        let grid = Rgb([228, 228, 232]);
        for i in 0..=4 {
            let y = y0 + (y1 - y0) * i as f32 / 4.0;
            line(&mut img, (x0, y), (x1, y), grid);
        }
        let mut last_epoch = 0;
        for s in &self.steps {
            if s.epoch != last_epoch && s.step > 1 {
                let x = x_of(s.step as f32 - 0.5);
                line(&mut img, (x, y0), (x, y1), grid);
            }
            last_epoch = s.epoch;
        }
        let axis = Rgb([60, 60, 60]);
        line(&mut img, (x0, y0), (x1, y0), axis);
        line(&mut img, (x0, y0), (x0, y1), axis);
        let raw = Rgb([150, 190, 235]);
        let smooth = Rgb([20, 70, 160]);
        let points: Vec<(f32, f32)> = self
            .steps
            .iter()
            .filter(|s| s.loss.is_finite())
            .map(|s| (x_of(s.step as f32), y_of(s.loss)))
            .collect();
        for w in points.windows(2) {
            line(&mut img, w[0], w[1], raw);
        }
        let mut ema = None;
        let mut smoothed = Vec::new();
        for s in self.steps.iter().filter(|s| s.loss.is_finite()) {
            let v = match ema {
                None => s.loss,
                Some(e) => 0.8 * e + 0.2 * s.loss,
            };
            ema = Some(v);
            smoothed.push((x_of(s.step as f32), y_of(v)));
        }
        for w in smoothed.windows(2) {
            line(&mut img, w[0], w[1], smooth);
        }
        // Epoch means at the epoch's last step.
        for (epoch, mean) in &self.epochs {
            if let Some(last) = self.steps.iter().rfind(|s| s.epoch == *epoch)
                && mean.is_finite()
            {
                dot(
                    &mut img,
                    (x_of(last.step as f32), y_of(*mean)),
                    Rgb([235, 120, 20]),
                );
            }
        }
        (img, (lo, hi))
    }

    /// Writes the loss curve as a PNG whose text chunks give the axes.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let (img, (lo, hi)) = self.draw();
        let pixels = loraflow_trainer::sample::png::RgbImage {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        };
        let text = vec![
            ("Title".to_string(), "training loss".to_string()),
            (
                "Description".to_string(),
                format!(
                    "x: optimiser steps 1 to {}; y: loss {lo:.4} (bottom) to {hi:.4} (top); light: per step, dark: moving average, dots: epoch means",
                    self.steps.len()
                ),
            ),
        ];
        loraflow_trainer::sample::png::write_png(path, &pixels, &text).map_err(Error::Trainer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_goes_down_when_the_loss_does() {
        let steps: Vec<StepLoss> = (1..=20)
            .map(|i| StepLoss {
                step: i,
                epoch: 1 + (i - 1) / 10,
                loss: 1.0 / i as f32,
            })
            .collect();
        let history = LossHistory {
            steps,
            epochs: vec![(1, 0.3), (2, 0.07)],
        };
        let (img, (lo, hi)) = history.draw();
        assert!(lo < 0.05 && hi > 1.0);
        // The raw curve starts high on the left and ends low on the right.
        let column_dark =
            |x: u32| (0..H).find(|&y| img.get_pixel(x, y)[0] < 200 && img.get_pixel(x, y)[2] > 200);
        let left = column_dark(MARGIN + 2).expect("curve at the left");
        let right = column_dark(W - MARGIN / 2 - 2).expect("curve at the right");
        assert!(
            left < right,
            "higher loss is drawn higher up: {left} vs {right}"
        );
        let json: serde_json::Value = serde_json::from_str(&history.to_json()).unwrap();
        assert_eq!(json["steps"].as_array().unwrap().len(), 20);
        assert_eq!(json["epochs"][1]["epoch"], 2);
    }
}
