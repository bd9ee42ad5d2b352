//! Aspect-ratio bucketing as sd-scripts does it: every resolution whose area fits the training
//! resolution squared, in steps; each image goes to the bucket of the nearest aspect ratio, is
//! scaled to cover it and centre-cropped.

use image::RgbImage;
use image::imageops::{FilterType, crop_imm, resize};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;

/// Bucket settings, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketOptions {
    /// Off: every image is scaled and centre-cropped to `resolution × resolution`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Side step between buckets; `resolution / 8` rounded to the model's multiple when absent
    /// (64 at 512 px, as sd-scripts).
    #[serde(default)]
    pub step: Option<usize>,
    /// Shortest side; `resolution / 2` when absent.
    #[serde(default)]
    pub min_size: Option<usize>,
    /// Longest side; `resolution × 2` when absent.
    #[serde(default)]
    pub max_size: Option<usize>,
}

fn yes() -> bool {
    true
}

impl Default for BucketOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            step: None,
            min_size: None,
            max_size: None,
        }
    }
}

/// The buckets of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    /// `(width, height)`, sorted.
    resolutions: Vec<(usize, usize)>,
}

fn round_to(v: usize, multiple: usize) -> usize {
    (v / multiple).max(1) * multiple
}

impl Buckets {
    /// The buckets for `resolution` whose sides are multiples of `multiple` (what the VAE and
    /// UNet need).
    pub fn new(resolution: usize, options: &BucketOptions, multiple: usize) -> Result<Self> {
        if resolution == 0 || !resolution.is_multiple_of(multiple) {
            return Err(Error::invalid(
                "dataset.resolution",
                resolution,
                format!("must be a positive multiple of {multiple} for this model"),
            ));
        }
        if !options.enabled {
            return Ok(Self {
                resolutions: vec![(resolution, resolution)],
            });
        }
        let step = options
            .step
            .unwrap_or_else(|| round_to(resolution / 8, multiple));
        if step == 0 || !step.is_multiple_of(multiple) {
            return Err(Error::invalid(
                "dataset.buckets.step",
                step,
                format!("must be a positive multiple of {multiple}"),
            ));
        }
        let min_size = round_to(options.min_size.unwrap_or(resolution / 2), step);
        let max_size = round_to(options.max_size.unwrap_or(resolution * 2), step);
        if min_size > resolution || max_size < resolution {
            return Err(Error::invalid(
                "dataset.buckets",
                format!("min_size {min_size}, max_size {max_size}"),
                format!("the resolution {resolution} must lie between them"),
            ));
        }
        let max_area = resolution * resolution;
        let mut set = std::collections::BTreeSet::new();
        let side = round_to(resolution, step);
        set.insert((side, side));
        let mut width = min_size;
        while width <= max_size {
            let height = max_size.min(round_to(max_area / width, step));
            if height >= min_size && width * height <= max_area {
                set.insert((width, height));
                set.insert((height, width));
            }
            width += step;
        }
        Ok(Self {
            resolutions: set.into_iter().collect(),
        })
    }

    /// Every bucket, `(width, height)`.
    pub fn resolutions(&self) -> &[(usize, usize)] {
        &self.resolutions
    }

    /// The bucket of an image: nearest aspect ratio, ties to the larger area.
    pub fn select(&self, width: usize, height: usize) -> (usize, usize) {
        let ar = width as f64 / height as f64;
        *self
            .resolutions
            .iter()
            .min_by(|a, b| {
                let ea = (a.0 as f64 / a.1 as f64 - ar).abs();
                let eb = (b.0 as f64 / b.1 as f64 - ar).abs();
                ea.total_cmp(&eb).then((b.0 * b.1).cmp(&(a.0 * a.1)))
            })
            .expect("at least one bucket")
    }
}

/// Scales `image` to cover `bucket` and centre-crops it, as a `[3, h, w]` tensor in [-1, 1].
pub fn fit_to_bucket(image: &RgbImage, bucket: (usize, usize)) -> HostTensor {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let (bw, bh) = bucket;
    let scale = (bw as f64 / w).max(bh as f64 / h);
    let rw = ((w * scale).round() as u32).max(bw as u32);
    let rh = ((h * scale).round() as u32).max(bh as u32);
    let resized = if (rw, rh) == (image.width(), image.height()) {
        image.clone()
    } else {
        resize(image, rw, rh, FilterType::Lanczos3)
    };
    let x = (rw - bw as u32) / 2;
    let y = (rh - bh as u32) / 2;
    let cropped = crop_imm(&resized, x, y, bw as u32, bh as u32).to_image();
    let plane = bw * bh;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in cropped.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    HostTensor::new(vec![3, bh, bw], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_buckets_match_sd_scripts_at_512() {
        let b = Buckets::new(512, &BucketOptions::default(), 8).unwrap();
        let r = b.resolutions();
        assert!(r.contains(&(512, 512)) && r.contains(&(384, 640)) && r.contains(&(640, 384)));
        assert!(
            r.iter()
                .all(|(w, h)| w * h <= 512 * 512 && w % 64 == 0 && h % 64 == 0)
        );
        assert_eq!(b.select(1000, 1000), (512, 512));
        assert_eq!(b.select(600, 1000), (384, 640));
    }

    #[test]
    fn tiny_resolutions_use_finer_steps() {
        let b = Buckets::new(64, &BucketOptions::default(), 16).unwrap();
        assert!(b.resolutions().contains(&(48, 80)), "{:?}", b.resolutions());
        assert_eq!(b.select(96, 160), (48, 80));
        let err = Buckets::new(60, &BucketOptions::default(), 16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiple of 16"), "{err}");
    }

    #[test]
    fn images_cover_and_crop_to_the_bucket() {
        let img = RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb([if x < 20 { 0 } else { 255 }, 0, 0])
        });
        let t = fit_to_bucket(&img, (16, 16));
        assert_eq!(t.shape, vec![3, 16, 16]);
        // Centre crop of a left-black/right-red image keeps both halves.
        assert!(t.data[0] < -0.9 && t.data[15] > 0.9);
    }
}
