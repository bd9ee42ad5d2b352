//! The contact sheet of a job: one row per epoch, after a first row from the base model
//! without the LoRA, one column per prompt. Samples are scaled up with nearest-neighbour
//! sampling (a 64-pixel sample becomes a 192-pixel cell, every pixel a crisp 3 × 3 block), the
//! prompts are written above their columns and each row is labelled with its epoch and losses,
//! so a reviewer sees the concept appear (or the base break) epoch by epoch on one picture.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use loraflow_core::artifact::EpochOutput;
use plotters::prelude::*;

use super::error::{Error, Result};
use super::fonts;

/// Width of the row labels on the left, in pixels.
pub const LABEL_WIDTH: u32 = 176;
/// Height of the prompt headers on top, in pixels.
pub const HEADER_HEIGHT: u32 = 64;
/// Space between and around cells, in pixels.
pub const GAP: u32 = 6;
/// Smallest cell: smaller samples are scaled up by a whole factor to reach it.
pub const MIN_CELL: u32 = 192;

const BACKGROUND: Rgb<u8> = Rgb([250, 250, 252]);
const MISSING: Rgb<u8> = Rgb([225, 225, 230]);

/// One row: its label lines and one image per prompt (`None` where a sample is missing).
#[derive(Debug, Clone, PartialEq)]
pub struct SheetRow {
    /// Label lines, the first in bold colour (`base model`, `epoch 3`), then figures.
    pub label: Vec<String>,
    /// One cell per prompt.
    pub cells: Vec<Option<RgbImage>>,
}

/// What a contact sheet shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactSheet {
    /// Column headers.
    pub prompts: Vec<String>,
    /// Rows, top to bottom.
    pub rows: Vec<SheetRow>,
}

/// The cell size for samples of `sample` pixels: a whole multiple of it, at least
/// [`MIN_CELL`] (or the sample itself when it is larger).
pub fn cell_size(sample: u32) -> u32 {
    let sample = sample.max(1);
    sample * MIN_CELL.div_ceil(sample).max(1)
}

/// Width and height of a sheet of `rows` × `columns` cells of `cell` pixels.
pub fn dimensions(rows: usize, columns: usize, cell: u32) -> (u32, u32) {
    (
        LABEL_WIDTH + columns as u32 * (cell + GAP) + GAP,
        HEADER_HEIGHT + rows as u32 * (cell + GAP) + GAP,
    )
}

/// Breaks `text` into at most `lines` lines of at most `width` characters, at spaces where it
/// can; an ellipsis ends the last line when text is left over.
fn wrap(text: &str, width: usize, lines: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        loop {
            let fits = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
            if fits <= width {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(&word);
                break;
            }
            if line.is_empty() {
                // A word longer than a line: cut it.
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                out.push(head);
            } else {
                out.push(std::mem::take(&mut line));
            }
            if word.is_empty() {
                break;
            }
        }
    }
    if !line.is_empty() {
        out.push(line);
    }
    if out.len() > lines {
        out.truncate(lines);
        let last = out.last_mut().expect("lines > 0");
        let kept: String = last.chars().take(width.saturating_sub(1)).collect();
        *last = format!("{kept}…");
    }
    out
}

impl ContactSheet {
    /// The sample size of the sheet: the largest sample width.
    fn sample_size(&self) -> u32 {
        self.rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten())
            .map(|c| c.width().max(c.height()))
            .max()
            .unwrap_or(64)
    }

    /// Draws the sheet.
    pub fn draw(&self) -> Result<RgbImage> {
        fonts::ensure();
        let cell = cell_size(self.sample_size());
        let columns = self.prompts.len();
        let (w, h) = dimensions(self.rows.len(), columns, cell);
        let mut canvas = RgbImage::from_pixel(w, h, BACKGROUND);
        let origin = |row: usize, col: usize| {
            (
                LABEL_WIDTH + GAP + col as u32 * (cell + GAP),
                HEADER_HEIGHT + GAP + row as u32 * (cell + GAP),
            )
        };
        for (r, row) in self.rows.iter().enumerate() {
            for col in 0..columns {
                let (x, y) = origin(r, col);
                match row.cells.get(col).and_then(Option::as_ref) {
                    Some(img) => {
                        let scale = cell / img.width().max(img.height()).max(1);
                        let scaled = imageops::resize(
                            img,
                            img.width() * scale.max(1),
                            img.height() * scale.max(1),
                            FilterType::Nearest,
                        );
                        imageops::overlay(&mut canvas, &scaled, x as i64, y as i64);
                    }
                    None => {
                        let blank = RgbImage::from_pixel(cell, cell, MISSING);
                        imageops::overlay(&mut canvas, &blank, x as i64, y as i64);
                    }
                }
            }
        }
        // Labels, drawn over the buffer with the embedded font.
        let fail = |e: &dyn std::fmt::Display| Error::picture("the contact sheet", e);
        {
            let root = BitMapBackend::with_buffer(&mut canvas, (w, h)).into_drawing_area();
            let header = (fonts::FAMILY, 14).into_font().color(&RGBColor(30, 30, 40));
            let chars = (cell as usize / 8).max(8);
            for (col, prompt) in self.prompts.iter().enumerate() {
                let (x, _) = origin(0, col);
                for (i, line) in wrap(prompt, chars, 3).iter().enumerate() {
                    root.draw(&Text::new(
                        line.clone(),
                        (x as i32, 8 + 17 * i as i32),
                        header.clone(),
                    ))
                    .map_err(|e| fail(&e))?;
                }
            }
            let title = (fonts::FAMILY, 16)
                .into_font()
                .color(&RGBColor(20, 70, 160));
            let figure = (fonts::FAMILY, 13).into_font().color(&RGBColor(60, 60, 70));
            for (r, row) in self.rows.iter().enumerate() {
                let (_, y) = origin(r, 0);
                for (i, line) in row.label.iter().enumerate() {
                    let style = if i == 0 {
                        title.clone()
                    } else {
                        figure.clone()
                    };
                    let text = wrap(line, (LABEL_WIDTH as usize - 16) / 8, 1)
                        .pop()
                        .unwrap_or_default();
                    root.draw(&Text::new(text, (10, y as i32 + 4 + 20 * i as i32), style))
                        .map_err(|e| fail(&e))?;
                }
            }
            root.present().map_err(|e| fail(&e))?;
        }
        Ok(canvas)
    }
}

/// The contact sheet of a sample step: `rendered` is `(epoch, prompt index, PNG)`, epoch 0 for
/// the base model; rows are labelled with the epochs' training and validation losses.
pub fn for_job(
    prompts: &[String],
    epochs: &[EpochOutput],
    rendered: &[(u32, usize, PathBuf)],
) -> Result<ContactSheet> {
    let mut row_epochs: Vec<u32> = rendered.iter().map(|r| r.0).collect();
    row_epochs.sort_unstable();
    row_epochs.dedup();
    let mut rows = Vec::with_capacity(row_epochs.len());
    for epoch in row_epochs {
        let mut cells = vec![None; prompts.len()];
        for (_, index, path) in rendered.iter().filter(|r| r.0 == epoch) {
            let img = image::open(path)
                .map_err(|e| {
                    Error::picture("the contact sheet", format!("{}: {e}", path.display()))
                })?
                .to_rgb8();
            if let Some(cell) = cells.get_mut(*index) {
                *cell = Some(img);
            }
        }
        let label = if epoch == 0 {
            vec!["base model".to_string(), "without the LoRA".to_string()]
        } else {
            let e = epochs.iter().find(|e| e.epoch == epoch);
            let mut label = vec![format!("epoch {epoch}")];
            if let Some(step) = e.and_then(|e| e.step) {
                label.push(format!("step {step}"));
            }
            if let Some(loss) = e.and_then(|e| e.loss) {
                label.push(format!("loss {loss:.4}"));
            }
            if let Some(loss) = e.and_then(|e| e.validation_loss) {
                label.push(format!("val loss {loss:.4}"));
            }
            label
        };
        rows.push(SheetRow { label, cells });
    }
    Ok(ContactSheet {
        prompts: prompts.to_vec(),
        rows,
    })
}

/// Draws `sheet` to `<dir>/contact_sheet.png` and into a TensorBoard event file under
/// `<dir>/tensorboard` (image `samples/contact_sheet` at `step`); returns both paths.
pub fn write(sheet: &ContactSheet, dir: &Path, step: u64) -> Result<(PathBuf, PathBuf)> {
    let img = sheet.draw()?;
    let (w, h) = img.dimensions();
    let path = dir.join("contact_sheet.png");
    let pixels = loraflow_trainer::sample::png::RgbImage {
        width: w,
        height: h,
        pixels: img.into_raw(),
    };
    let text = vec![(
        "Title".to_string(),
        "samples per epoch: base model first, one column per prompt".to_string(),
    )];
    loraflow_trainer::sample::png::write_png(&path, &pixels, &text).map_err(Error::Trainer)?;
    let png =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let events_dir = dir.join("tensorboard");
    let io = |e| {
        Error::io(
            format!("writing TensorBoard events in {}", events_dir.display()),
            e,
        )
    };
    let mut events = crate::tensorboard::EventWriter::create(&events_dir, "sample").map_err(io)?;
    events
        .image("samples/contact_sheet", step, png, (w, h))
        .map_err(io)?;
    Ok((path, events.finish().map_err(io)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(colour: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(64, 64, Rgb(colour))
    }

    #[test]
    fn one_row_per_epoch_plus_the_base_one_column_per_prompt() {
        let prompts = vec![
            "sks, a red circle".to_string(),
            "a blue square on a plain background, drawn large in the middle of the picture"
                .to_string(),
        ];
        let rows: Vec<SheetRow> = (0..4)
            .map(|r| SheetRow {
                label: if r == 0 {
                    vec!["base model".into()]
                } else {
                    vec![
                        format!("epoch {r}"),
                        "loss 0.1234".into(),
                        "val 0.2345".into(),
                    ]
                },
                cells: vec![Some(sample([200, 30, 30])), Some(sample([30, 30, 200]))],
            })
            .collect();
        let sheet = ContactSheet { prompts, rows };
        let img = sheet.draw().unwrap();
        assert_eq!(cell_size(64), 192);
        assert_eq!(img.dimensions(), dimensions(4, 2, 192));
        assert_eq!(
            img.dimensions(),
            (
                LABEL_WIDTH + 2 * (192 + GAP) + GAP,
                HEADER_HEIGHT + 4 * (192 + GAP) + GAP
            )
        );
        // Every cell is the sample scaled up, nearest neighbour: flat colour to its corners.
        for r in 0..4u32 {
            let y = HEADER_HEIGHT + GAP + r * (192 + GAP);
            let x0 = LABEL_WIDTH + GAP;
            assert_eq!(img.get_pixel(x0, y + 191).0, [200, 30, 30]);
            assert_eq!(img.get_pixel(x0 + 192 + GAP + 191, y).0, [30, 30, 200]);
        }
        // Text in the header and the label column.
        let dark = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (x0..x1)
                .flat_map(|x| (y0..y1).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 120))
                .count()
        };
        assert!(
            dark(LABEL_WIDTH, img.width(), 0, HEADER_HEIGHT) > 100,
            "prompts"
        );
        assert!(
            dark(0, LABEL_WIDTH, HEADER_HEIGHT, img.height()) > 100,
            "row labels"
        );
    }

    #[test]
    fn long_prompts_wrap_and_end_with_an_ellipsis() {
        assert_eq!(wrap("a b c", 10, 3), vec!["a b c"]);
        let lines = wrap("one two three four five six seven", 9, 2);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with('…'), "{lines:?}");
        assert_eq!(wrap("abcdefghij", 4, 5), vec!["abcd", "efgh", "ij"]);
    }
}
