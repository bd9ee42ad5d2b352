//! The VAE's ceiling on the shapes world: ground-truth pictures encoded and decoded by the VAE
//! alone, then read back. No UNet on a VAE can draw better than its round trip reads.

use burn::tensor::{Device, Tensor, TensorData};
use image::{Rgb, RgbImage};

use super::score::{Tally, read};
use super::shapes::{Background, Colour, Scene, Shape};
use crate::rng::{SeededRng, Stream};
use crate::tensor_file::HostTensor;
use crate::vae::AutoencoderKL;

/// Seed of the round-trip scenes (sizes and positions).
const SEED: u64 = 7;

/// Pictures as one `[n, 3, h, w]` tensor in [-1, 1] (all of one size).
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = images.first().map_or((0, 0), RgbImage::dimensions);
    let mut data = Vec::with_capacity(images.len() * 3 * (w * h) as usize);
    for image in images {
        for c in 0..3 {
            data.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
        }
    }
    Tensor::from_data(
        TensorData::new(data, [images.len(), 3, h as usize, w as usize]),
        device,
    )
}

/// A `[n, 3, h, w]` tensor in about [-1, 1] as pictures (clamped).
pub fn tensor_to_images(tensor: Tensor<4>) -> Vec<RgbImage> {
    let [n, _, h, w] = tensor.dims();
    let host = HostTensor::from_tensor(tensor.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0));
    let plane = h * w;
    (0..n)
        .map(|i| {
            let base = i * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                Rgb(std::array::from_fn(|c| {
                    (host.data[base + c * plane + p] * 255.0).round() as u8
                }))
            })
        })
        .collect()
}

/// The round-trip scenes: every colour, base shape and background, at two seeded sizes and
/// positions each (48).
pub fn round_trip_scenes() -> Vec<Scene> {
    let mut rng = SeededRng::new(SEED, Stream::Sample);
    let mut scenes = Vec::new();
    for colour in Colour::ALL {
        for shape in Shape::BASE {
            for background in Background::ALL {
                for _ in 0..2 {
                    scenes.push(Scene {
                        colour,
                        background,
                        ..Scene::random_with(shape, &mut rng)
                    });
                }
            }
        }
    }
    scenes
}

/// What the reader makes of the VAE's reconstructions of [`round_trip_scenes`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoundTrip {
    /// Reconstructions read with the drawn shape and colour.
    pub drawn: Tally,
    /// Reconstructions read with the drawn background.
    pub background: Tally,
}

impl RoundTrip {
    /// Encodes (the latent mean) and decodes every round-trip scene and reads it back.
    pub fn measure(vae: &AutoencoderKL, device: &Device) -> Self {
        Self::measure_with_images(vae, device).0
    }

    /// [`RoundTrip::measure`], with the reconstructions (in [`round_trip_scenes`]' order).
    pub fn measure_with_images(vae: &AutoencoderKL, device: &Device) -> (Self, Vec<RgbImage>) {
        let scenes = round_trip_scenes();
        let mut result = Self::default();
        let mut images = Vec::with_capacity(scenes.len());
        for chunk in scenes.chunks(16) {
            let drawn: Vec<RgbImage> = chunk.iter().map(Scene::render).collect();
            let (mean, _) = vae.encode(images_to_tensor(&drawn, device));
            for (scene, back) in chunk.iter().zip(tensor_to_images(vae.decode(mean))) {
                let r = read(&back);
                result.drawn.add(r.shows(scene.colour, scene.shape));
                result
                    .background
                    .add(r.background == Some(scene.background));
                images.push(back);
            }
        }
        (result, images)
    }
}

impl std::fmt::Display for RoundTrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shape and colour as drawn {}, background {}",
            self.drawn, self.background
        )
    }
}
