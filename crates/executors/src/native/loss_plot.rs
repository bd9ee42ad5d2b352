//! The loss plot (`loss_curve.png`), drawn with plotters: training loss per step (raw, light)
//! and its moving average (dark), the validation loss at the base model and at every saved
//! LoRA (orange points), the learning rate on the right-hand axis (grey), a dashed line at
//! every saved epoch, and the approved epoch in green once a reviewer has chosen one.
//! Axes carry titles and tick labels; a legend names every series. Text is drawn with a font
//! embedded in the binary (see [`fonts`](super::fonts)), so no system font is needed.

use std::path::Path;

use plotters::prelude::*;

use super::error::{Error, Result};
use super::fonts;
use super::report::LossHistory;

/// Width of the plot in pixels.
pub const WIDTH: u32 = 960;
/// Height of the plot in pixels.
pub const HEIGHT: u32 = 540;

const RAW: RGBColor = RGBColor(150, 190, 235);
const SMOOTH: RGBColor = RGBColor(20, 70, 160);
const VALIDATION: RGBColor = RGBColor(235, 120, 20);
const LEARNING_RATE: RGBColor = RGBColor(110, 110, 110);
const SAVED: RGBColor = RGBColor(190, 190, 200);
/// The approved epoch's line.
pub const APPROVED: RGBColor = RGBColor(20, 150, 60);

/// The loss range shown: every finite training and validation loss, padded by 5 %.
fn loss_range(history: &LossHistory) -> (f64, f64) {
    let values = history
        .steps
        .iter()
        .map(|s| s.loss)
        .chain(history.validation.iter().map(|v| v.loss))
        .filter(|l| l.is_finite())
        .map(f64::from);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-6 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Draws the plot into an RGB buffer of [`WIDTH`] × [`HEIGHT`].
pub fn draw(history: &LossHistory) -> Result<Vec<u8>> {
    fonts::ensure();
    let fail = |e: &dyn std::fmt::Display| Error::picture("the loss plot", e);
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let steps = history.steps.last().map_or(1, |s| s.step).max(1) as f64;
        let (lo, hi) = loss_range(history);
        let lr_max = history
            .steps
            .iter()
            .filter_map(|s| s.learning_rate)
            .fold(0.0f64, f64::max);
        let lr_top = if lr_max > 0.0 { lr_max * 1.1 } else { 1.0 };
        let title = match history.approved_epoch {
            Some(e) => format!("Training and validation loss · epoch {e} approved"),
            None => "Training and validation loss".to_string(),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (fonts::FAMILY, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0f64..steps, lo..hi)
            .map_err(|e| fail(&e))?
            .set_secondary_coord(0f64..steps, 0f64..lr_top);
        chart
            .configure_mesh()
            .x_desc("optimiser step")
            .y_desc("loss")
            .label_style((fonts::FAMILY, 13))
            .axis_desc_style((fonts::FAMILY, 15))
            .light_line_style(RGBColor(240, 240, 244))
            .bold_line_style(RGBColor(225, 225, 232))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .label_style((fonts::FAMILY, 13))
            .axis_desc_style((fonts::FAMILY, 15))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(|e| fail(&e))?;

        // Saved epochs: a dashed line each, labelled at the top.
        let dashed = |x: f64| {
            let n = 40;
            (0..n).step_by(2).map(move |i| {
                let y0 = lo + (hi - lo) * i as f64 / n as f64;
                let y1 = lo + (hi - lo) * (i + 1) as f64 / n as f64;
                PathElement::new(vec![(x, y0), (x, y1)], SAVED.stroke_width(1))
            })
        };
        for (i, mark) in history.saved.iter().enumerate() {
            let x = mark.step as f64;
            let anno = chart.draw_series(dashed(x)).map_err(|e| fail(&e))?;
            if i == 0 {
                anno.label("saved epoch").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], SAVED.stroke_width(2))
                });
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("e{}", mark.epoch),
                    (x, hi),
                    (fonts::FAMILY, 12).into_font().color(&LEARNING_RATE),
                )))
                .map_err(|e| fail(&e))?;
        }

        // The approved epoch.
        if let Some(epoch) = history.approved_epoch {
            let step = history
                .saved
                .iter()
                .find(|m| m.epoch == epoch)
                .map(|m| m.step)
                .or_else(|| history.last_step_of(epoch));
            if let Some(step) = step {
                let x = step as f64;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, lo), (x, hi)],
                        APPROVED.stroke_width(3),
                    )))
                    .map_err(|e| fail(&e))?
                    .label(format!("approved: epoch {epoch}"))
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], APPROVED.stroke_width(3))
                    });
            }
        }

        let raw: Vec<(f64, f64)> = history
            .steps
            .iter()
            .filter(|s| s.loss.is_finite())
            .map(|s| (s.step as f64, s.loss as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(raw, RAW.stroke_width(1)))
            .map_err(|e| fail(&e))?
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RAW.stroke_width(2)));
        let smooth: Vec<(f64, f64)> = history
            .smoothed()
            .into_iter()
            .map(|(s, l)| (s as f64, l as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, SMOOTH.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label("training loss, moving average")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SMOOTH.stroke_width(2)));

        let validation: Vec<(f64, f64)> = history
            .validation
            .iter()
            .filter(|v| v.loss.is_finite())
            .map(|v| (v.step as f64, v.loss as f64))
            .collect();
        if !validation.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    validation.clone(),
                    VALIDATION.mix(0.6).stroke_width(1),
                ))
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(
                    validation
                        .into_iter()
                        .map(|p| Circle::new(p, 5, VALIDATION.filled())),
                )
                .map_err(|e| fail(&e))?
                .label("validation loss (held-out images)")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, VALIDATION.filled()));
        }

        let lr: Vec<(f64, f64)> = history
            .steps
            .iter()
            .filter_map(|s| s.learning_rate.map(|lr| (s.step as f64, lr)))
            .collect();
        if !lr.is_empty() {
            chart
                .draw_secondary_series(LineSeries::new(lr, LEARNING_RATE.stroke_width(1)))
                .map_err(|e| fail(&e))?
                .label("learning rate (right axis)")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], LEARNING_RATE.stroke_width(2))
                });
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((fonts::FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 210))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(buf)
}

impl LossHistory {
    /// Draws the loss plot and writes it as a PNG (with a title and a description of the
    /// series in its text chunks).
    pub fn write_plot(&self, path: &Path) -> Result<()> {
        let pixels = draw(self)?;
        let image = loraflow_trainer::sample::png::RgbImage {
            width: WIDTH,
            height: HEIGHT,
            pixels,
        };
        let text = vec![
            (
                "Title".to_string(),
                "training and validation loss".to_string(),
            ),
            (
                "Description".to_string(),
                format!(
                    "x: optimiser steps 1 to {}; left axis: loss (light: per step, dark: moving \
                     average, orange: validation loss); right axis: learning rate; dashed: saved \
                     epochs{}",
                    self.steps.len(),
                    self.approved_epoch
                        .map(|e| format!("; green: approved epoch {e}"))
                        .unwrap_or_default()
                ),
            ),
        ];
        loraflow_trainer::sample::png::write_png(path, &image, &text).map_err(Error::Trainer)
    }
}

/// Draws the loss plot of a run again from its `loss_history.json`, with `approved_epoch`
/// highlighted, to `out` (for the review and publish side, once an epoch is chosen).
pub fn render_approved(history_json: &Path, approved_epoch: usize, out: &Path) -> Result<()> {
    let bytes = std::fs::read(history_json)
        .map_err(|e| Error::io(format!("reading {}", history_json.display()), e))?;
    let mut history = LossHistory::from_json(&bytes)?;
    history.approved_epoch = Some(approved_epoch);
    history.write_plot(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::report::{EpochLoss, SavedMark, StepLoss, ValidationMark};

    fn history() -> LossHistory {
        LossHistory {
            steps: (1..=40)
                .map(|i| StepLoss {
                    step: i,
                    epoch: 1 + (i - 1) / 10,
                    loss: 0.2 + 1.0 / i as f32,
                    learning_rate: Some(1e-3 * (1.0 - i as f64 / 40.0)),
                })
                .collect(),
            epochs: (1..=4)
                .map(|e| EpochLoss {
                    epoch: e,
                    mean_loss: 0.3,
                })
                .collect(),
            saved: (1..=4)
                .map(|e| SavedMark {
                    epoch: e,
                    step: e * 10,
                })
                .collect(),
            validation: (0..=4)
                .map(|e| ValidationMark {
                    epoch: e,
                    step: e * 10,
                    loss: 0.9 - 0.1 * e as f32,
                })
                .collect(),
            approved_epoch: None,
        }
    }

    fn pixel(buf: &[u8], x: u32, y: u32) -> [u8; 3] {
        let i = ((y * WIDTH + x) * 3) as usize;
        [buf[i], buf[i + 1], buf[i + 2]]
    }

    fn count(buf: &[u8], xs: std::ops::Range<u32>, f: impl Fn([u8; 3]) -> bool) -> usize {
        xs.flat_map(|x| (0..HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| f(pixel(buf, x, y)))
            .count()
    }

    #[test]
    fn the_plot_has_labels_series_and_the_approved_epoch() {
        let plain = draw(&history()).unwrap();
        assert_eq!(plain.len(), (WIDTH * HEIGHT * 3) as usize);
        let dark = |p: [u8; 3]| p.iter().all(|&c| c < 110);
        // Tick labels and the axis title on the left, and on the right: text was drawn.
        assert!(count(&plain, 0..60, dark) > 100, "left axis labels");
        assert!(
            count(&plain, WIDTH - 70..WIDTH, dark) > 100,
            "right axis labels"
        );
        // The orange validation points.
        let orange = |p: [u8; 3]| p == [235, 120, 20];
        assert!(count(&plain, 0..WIDTH, orange) > 50);
        // No green without an approved epoch; a green line with one.
        let green = |p: [u8; 3]| p == [20, 150, 60];
        assert_eq!(count(&plain, 0..WIDTH, green), 0);
        let mut approved = history();
        approved.approved_epoch = Some(2);
        let marked = draw(&approved).unwrap();
        assert!(count(&marked, 0..WIDTH, green) > 200);
    }

    #[test]
    fn the_plot_is_drawn_again_from_its_json_with_the_approved_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("loss_history.json");
        std::fs::write(&json, history().to_json()).unwrap();
        let out = dir.path().join("approved.png");
        render_approved(&json, 3, &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(img.pixels().any(|p| p.0 == [20, 150, 60]));
    }
}
