//! Flux's rotary position embedding over several position axes (diffusers' `FluxPosEmbed`
//! and `apply_rotary_emb`).
//!
//! Every token has one position per axis (`ids`: text tokens `(0, 0, 0)`, image tokens
//! `(0, row, column)` of the packed latent grid); axis `i` rotates `axes_dim[i]` consecutive
//! features of each head with the frequencies `θ^(-2k / axes_dim[i])`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;

/// The base period of Flux's rotary embedding.
pub const ROPE_THETA: f64 = 10_000.0;

/// The largest position accepted on any axis (Flux latents are at most a few hundred tokens a
/// side; positions this large would already lose precision in `f32`).
pub const MAX_POSITION: f32 = 1.0e6;

/// Cosines and sines of every token's rotation angles, repeated pairwise as diffusers'
/// `repeat_interleave_real`.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// `[tokens, head_dim]`.
    pub cos: Tensor<2>,
    /// `[tokens, head_dim]`.
    pub sin: Tensor<2>,
}

impl RotaryEmbedding {
    /// The embedding of the token positions `ids` (`[tokens, axes]`, text tokens first then
    /// image tokens, as the transformer concatenates them).
    ///
    /// The angles are computed on the host in `f64` and rounded to `f32` once, as diffusers
    /// does (`freqs_dtype = float64`).
    ///
    /// # Shapes
    ///
    /// - ids: `[tokens, axes_dim.len()]`
    /// - output: `[tokens, sum(axes_dim)]` twice
    pub fn new(ids: &HostTensor, axes_dim: &[usize], theta: f64, device: &Device) -> Result<Self> {
        let axes = axes_dim.len();
        if ids.shape.len() != 2 || ids.shape[1] != axes {
            return Err(Error::invalid(
                "ids",
                format!("shape {:?}", ids.shape),
                format!("expected [tokens, {axes}] (one position per rotary axis)"),
            ));
        }
        if let Some(bad) = ids
            .data
            .iter()
            .find(|p| !p.is_finite() || p.abs() > MAX_POSITION)
        {
            return Err(Error::invalid(
                "ids",
                bad,
                format!("positions must be finite and within ±{MAX_POSITION}"),
            ));
        }
        let tokens = ids.shape[0];
        let head_dim: usize = axes_dim.iter().sum();
        let freqs: Vec<Vec<f64>> = axes_dim
            .iter()
            .map(|&dim| {
                (0..dim / 2)
                    .map(|k| 1.0 / theta.powf((2 * k) as f64 / dim as f64))
                    .collect()
            })
            .collect();
        let mut cos = Vec::with_capacity(tokens * head_dim);
        let mut sin = Vec::with_capacity(tokens * head_dim);
        for position in ids.data.chunks(axes) {
            for (p, axis) in position.iter().zip(&freqs) {
                for f in axis {
                    let angle = *p as f64 * f;
                    let (s, c) = angle.sin_cos();
                    cos.extend([c as f32; 2]);
                    sin.extend([s as f32; 2]);
                }
            }
        }
        let upload =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [tokens, head_dim]), device);
        Ok(Self {
            cos: upload(cos),
            sin: upload(sin),
        })
    }

    /// Tokens covered.
    pub fn tokens(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates each consecutive feature pair `(a, b)` of every head by its token's angle:
    /// `(a cos − b sin, b cos + a sin)`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, heads, tokens, head_dim]`
    /// - output: `[batch, heads, tokens, head_dim]`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, tokens, head_dim] = x.dims();
        let pairs = x.clone().reshape([batch, heads, tokens, head_dim / 2, 2]);
        let real = pairs.clone().narrow(4, 0, 1);
        let imag = pairs.narrow(4, 1, 1);
        let rotated =
            Tensor::cat(vec![imag.neg(), real], 4).reshape([batch, heads, tokens, head_dim]);
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        x * cos + rotated * sin
    }
}

/// Positions of the image tokens of a `height × width` packed latent grid: `(first_axis, row,
/// column)` in row-major order, as `FluxPipeline._prepare_latent_image_ids` (`first_axis` is 0
/// for the image being generated).
///
/// # Shapes
///
/// - output: `[height · width, 3]`
pub fn image_ids(height: usize, width: usize, first_axis: f32) -> HostTensor {
    let mut data = Vec::with_capacity(height * width * 3);
    for row in 0..height {
        for col in 0..width {
            data.extend([first_axis, row as f32, col as f32]);
        }
    }
    HostTensor::new(vec![height * width, 3], data)
}

/// Positions of `tokens` text tokens: all zero, as `FluxPipeline` gives the T5 states.
///
/// # Shapes
///
/// - output: `[tokens, 3]`
pub fn text_ids(tokens: usize) -> HostTensor {
    HostTensor::new(vec![tokens, 3], vec![0.0; tokens * 3])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    #[test]
    fn rotation_matches_closed_form() {
        let device = Device::flex();
        // One axis of width 4 (frequencies 1 and 0.01), position 2.
        let ids = HostTensor::new(vec![1, 1], vec![2.0]);
        let rope = RotaryEmbedding::new(&ids, &[4], ROPE_THETA, &device).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]),
            &device,
        );
        let out = rope.apply(x).into_data().try_into_vec::<f32>().unwrap();
        let (s0, c0) = 2f32.sin_cos();
        let (s1, c1) = 0.02f32.sin_cos();
        let expected = [
            c0 - 2.0 * s0,
            2.0 * c0 + s0,
            3.0 * c1 - 4.0 * s1,
            4.0 * c1 + 3.0 * s1,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn ids_must_match_the_axes_and_be_finite() {
        let device = Device::flex();
        let err = RotaryEmbedding::new(&image_ids(2, 2, 0.0), &[4, 4], ROPE_THETA, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ids") && err.contains("[4, 3]") && err.contains("[tokens, 2]"),
            "{err}"
        );
        let nan = HostTensor::new(vec![1, 3], vec![0.0, f32::NAN, 0.0]);
        let err = RotaryEmbedding::new(&nan, &[4, 4, 8], ROPE_THETA, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NaN"), "{err}");
    }

    #[test]
    fn image_ids_are_row_major() {
        let ids = image_ids(2, 3, 1.0);
        assert_eq!(ids.shape, vec![6, 3]);
        assert_eq!(&ids.data[9..12], &[1.0, 1.0, 0.0]);
        assert_eq!(&ids.data[15..18], &[1.0, 1.0, 2.0]);
        assert_eq!(text_ids(2).data, vec![0.0; 6]);
    }
}
