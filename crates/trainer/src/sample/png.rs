//! PNG files with the prompt and seed in text chunks.
//!
//! Each key becomes a `tEXt` chunk when its value is Latin-1 (what most viewers read) and an
//! `iTXt` (UTF-8) chunk otherwise. The `parameters` key follows A1111's layout, which image
//! browsers and model sites parse.

use std::io::BufWriter;
use std::path::Path;

use crate::error::{Error, Result};

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major `RGBRGB…` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Converts a `[3, height, width]` image in [0, 1] (row-major f32) to 8-bit, rounding as
    /// diffusers' `numpy_to_pil` does (`round(x · 255)`).
    pub fn from_chw(data: &[f32], height: usize, width: usize) -> Self {
        let plane = height * width;
        let mut pixels = Vec::with_capacity(plane * 3);
        for i in 0..plane {
            for c in 0..3 {
                let v = data[c * plane + i].clamp(0.0, 1.0);
                pixels.push((v * 255.0).round() as u8);
            }
        }
        Self {
            width: width as u32,
            height: height as u32,
            pixels,
        }
    }
}

fn latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256 && c != '\0')
}

/// Writes `image` as a PNG with the given text chunks (keyword, value).
pub fn write_png(path: &Path, image: &RgbImage, text: &[(String, String)]) -> Result<()> {
    let encoding = |e: png::EncodingError| Error::write(path, std::io::Error::other(e));
    let file = std::fs::File::create(path).map_err(|e| Error::write(path, e))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), image.width, image.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, value) in text {
        if latin1(value) {
            encoder
                .add_text_chunk(key.clone(), value.clone())
                .map_err(encoding)?;
        } else {
            encoder
                .add_itxt_chunk(key.clone(), value.clone())
                .map_err(encoding)?;
        }
    }
    let mut writer = encoder.write_header().map_err(encoding)?;
    writer.write_image_data(&image.pixels).map_err(encoding)?;
    writer.finish().map_err(encoding)
}

/// The text chunks of a PNG file (`tEXt`, `zTXt` and `iTXt`), in file order.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::read(path, e))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder.read_info().map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    Ok(out)
}
