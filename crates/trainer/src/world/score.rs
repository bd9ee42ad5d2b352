//! A deterministic reader of shapes-world pictures: which colour and which shape an image
//! shows, from plain colour and area statistics.
//!
//! 1. The background is the mean of the one-pixel frame; pixels far from it are foreground.
//! 2. The shape's colour is the palette colour nearest the mean of the half of the foreground
//!    farthest from the background (the inside, not the anti-aliased edge).
//! 3. The shape's box is the 3rd–97th percentile of foreground coordinates (robust to specks).
//!    Inside it: a hollow centre is a ring; a top third much emptier than the bottom third is a
//!    triangle; filled corners make a square; otherwise a well-filled box is a circle.
//!
//! Thresholds sit between the values the exact shapes give (corners: square 0.96–1, circle and
//! ring 0.3–0.6; top over bottom third: triangle 0.36–0.43, others about 1; centre: ring 0,
//! others 1), so generated pictures that are blurry or slightly off still read correctly, while
//! noise reads as nothing.

use image::RgbImage;

use super::shapes::{Background, Colour, Shape};

/// Distance (RGB, 0–441) from the background beyond which a pixel is foreground.
const FOREGROUND: f32 = 90.0;
/// Fewer foreground pixels than this is an empty picture.
const MIN_PIXELS: usize = 40;
/// The farthest a mean colour may be from its palette colour and still count as it.
const MAX_COLOUR_DISTANCE: f32 = 130.0;

/// What a picture shows, as far as the reader can tell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The background, when it is one of the world's.
    pub background: Option<Background>,
    /// The shape's colour, when there is a shape of a palette colour.
    pub colour: Option<Colour>,
    /// The shape, when one is recognised.
    pub shape: Option<Shape>,
    /// Share of the shape's box covered by foreground.
    pub fill: f32,
    /// Share of the box's central disc (radius a fifth of the box) covered by foreground.
    pub centre_fill: f32,
    /// Share of the box's four corner squares (a fifth of the box each) covered.
    pub corner_fill: f32,
    /// Fill of the box's top third over its bottom third.
    pub top_bottom: f32,
}

impl Reading {
    /// Whether the picture shows `shape` in `colour`.
    pub fn shows(&self, colour: Colour, shape: Shape) -> bool {
        self.colour == Some(colour) && self.shape == Some(shape)
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

fn rgb(c: [u8; 3]) -> [f32; 3] {
    c.map(f32::from)
}

fn nearest<T: Copy>(value: [f32; 3], options: &[(T, [u8; 3])], max: f32) -> Option<T> {
    options
        .iter()
        .map(|&(t, c)| (t, distance(value, rgb(c))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, d)| *d <= max)
        .map(|(t, _)| t)
}

fn percentile(sorted: &[u32], p: f32) -> u32 {
    sorted[((sorted.len() - 1) as f32 * p).round() as usize]
}

/// Reads a picture file (PNG or any format the `image` crate decodes).
pub fn read_file(path: &std::path::Path) -> crate::error::Result<Reading> {
    let image = image::open(path).map_err(|e| crate::error::Error::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(read(&image.to_rgb8()))
}

/// Reads a picture.
pub fn read(image: &RgbImage) -> Reading {
    let (w, h) = image.dimensions();
    let pixel = |x: u32, y: u32| rgb(image.get_pixel(x, y).0);
    let mut frame = [0f32; 3];
    let mut frame_n = 0f32;
    for x in 0..w {
        for y in [0, h - 1] {
            frame = std::array::from_fn(|c| frame[c] + pixel(x, y)[c]);
            frame_n += 1.0;
        }
    }
    for y in 1..h.saturating_sub(1) {
        for x in [0, w - 1] {
            frame = std::array::from_fn(|c| frame[c] + pixel(x, y)[c]);
            frame_n += 1.0;
        }
    }
    let bg = frame.map(|v| v / frame_n);
    let backgrounds: Vec<(Background, [u8; 3])> =
        Background::ALL.iter().map(|b| (*b, b.rgb())).collect();
    let background = nearest(bg, &backgrounds, MAX_COLOUR_DISTANCE);

    let mask: Vec<bool> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| distance(pixel(x, y), bg) > FOREGROUND)
        .collect();
    let at = |x: u32, y: u32| mask[(y * w + x) as usize];
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut fg: Vec<(f32, [f32; 3])> = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if at(x, y) {
                xs.push(x);
                ys.push(y);
                let p = pixel(x, y);
                fg.push((distance(p, bg), p));
            }
        }
    }
    let empty = Reading {
        background,
        colour: None,
        shape: None,
        fill: 0.0,
        centre_fill: 0.0,
        corner_fill: 0.0,
        top_bottom: 0.0,
    };
    if xs.len() < MIN_PIXELS {
        return empty;
    }
    let colours: Vec<(Colour, [u8; 3])> = Colour::ALL.iter().map(|c| (*c, c.rgb())).collect();
    // The farther half from the background: the shape's inside, not its anti-aliased edge.
    fg.sort_by(|a, b| b.0.total_cmp(&a.0));
    let core = &fg[..fg.len().div_ceil(2)];
    let sum = core.iter().fold([0f32; 3], |acc, (_, p)| {
        std::array::from_fn(|c| acc[c] + p[c])
    });
    let colour = nearest(
        sum.map(|v| v / core.len() as f32),
        &colours,
        MAX_COLOUR_DISTANCE,
    );

    xs.sort_unstable();
    ys.sort_unstable();
    let (x0, x1) = (percentile(&xs, 0.03), percentile(&xs, 0.97));
    let (y0, y1) = (percentile(&ys, 0.03), percentile(&ys, 0.97));
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    if bw < 4.0 || bh < 4.0 {
        return Reading { colour, ..empty };
    }
    // Share of foreground among box pixels whose box-relative position (u, v ∈ [0, 1]) passes.
    let share = |keep: &dyn Fn(f32, f32) -> bool| -> f32 {
        let (mut inside, mut total) = (0f32, 0f32);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let u = (x - x0) as f32 / (bw - 1.0);
                let v = (y - y0) as f32 / (bh - 1.0);
                if keep(u, v) {
                    total += 1.0;
                    if at(x, y) {
                        inside += 1.0;
                    }
                }
            }
        }
        if total == 0.0 { 0.0 } else { inside / total }
    };
    let fill = share(&|_, _| true);
    let centre_fill = share(&|u, v| (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.2f32.powi(2));
    let corner_fill = share(&|u, v| (u <= 0.2 || u >= 0.8) && (v <= 0.2 || v >= 0.8));
    let top = share(&|_, v| v <= 1.0 / 3.0);
    let bottom = share(&|_, v| v >= 2.0 / 3.0);
    let top_bottom = if bottom > 0.0 { top / bottom } else { 1.0 };
    let aspect = bw / bh;
    // A shape is only read on one of the world's plain backgrounds: noise has none.
    let shape = if background.is_none() || !(0.6..=1.6).contains(&aspect) || fill < 0.3 {
        None
    } else if centre_fill < 0.35 {
        Some(Shape::Ring)
    } else if top_bottom < 0.6 {
        Some(Shape::Triangle)
    } else if corner_fill > 0.8 {
        Some(Shape::Square)
    } else if fill > 0.6 {
        Some(Shape::Circle)
    } else {
        None
    };
    Reading {
        background,
        colour,
        shape,
        fill,
        centre_fill,
        corner_fill,
        top_bottom,
    }
}

/// Shares of a set of readings that show what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    /// Pictures read.
    pub total: usize,
    /// Pictures that show the asked shape in the asked colour.
    pub hits: usize,
}

impl Tally {
    /// Counts one picture.
    pub fn add(&mut self, hit: bool) {
        self.total += 1;
        self.hits += usize::from(hit);
    }

    /// `hits / total` (0 when empty).
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.hits as f64 / self.total as f64
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ({:.0}%)",
            self.hits,
            self.total,
            100.0 * self.rate()
        )
    }
}
