//! Timestep embeddings: diffusers' `Timesteps` (sinusoidal) and `TimestepEmbedding` (MLP).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};

/// Sinusoidal embedding of (possibly fractional) timesteps, as diffusers'
/// `get_timestep_embedding` with `max_period = 10000`.
///
/// The frequencies are computed on the host in `f32` in the same order of operations as
/// diffusers, so that the embedding matches PyTorch's bit for bit up to `sin`/`cos` rounding.
///
/// # Shapes
///
/// - timesteps: `[batch]`
/// - output: `[batch, dim]`
pub fn timestep_embedding(
    timesteps: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<2> {
    let device = timesteps.device();
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / (half as f32 - freq_shift as f32)).exp())
        .collect();
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = timesteps.unsqueeze_dim::<2>(1) * freqs;
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        let [batch, _] = emb.dims();
        Tensor::cat(vec![emb, Tensor::zeros([batch, 1], &device)], 1)
    } else {
        emb
    }
}

/// Configuration of a [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal input.
    pub d_input: usize,
    /// Width of the embedding.
    pub d_embed: usize,
}

impl TimestepEmbeddingConfig {
    /// Builds the MLP with PyTorch's default initialisation.
    pub fn init(&self, device: &Device) -> TimestepEmbedding {
        TimestepEmbedding {
            linear_1: LoraLinearConfig::new(self.d_input, self.d_embed).init(device),
            linear_2: LoraLinearConfig::new(self.d_embed, self.d_embed).init(device),
        }
    }
}

/// `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// First projection.
    pub linear_1: LoraLinear,
    /// Second projection.
    pub linear_2: LoraLinear,
}

impl TimestepEmbedding {
    /// Embeds the sinusoidal features.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, d_input]`
    /// - output: `[batch, d_embed]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

impl LoraLayers for TimestepEmbedding {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.linear_1.collect_layers(&join(prefix, "linear_1"), out);
        self.linear_2.collect_layers(&join(prefix, "linear_2"), out);
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    #[test]
    fn embedding_matches_closed_form() {
        let device = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 10.0], [2]), &device);
        let emb = timestep_embedding(t, 4, true, 0.0);
        let v = emb.into_data().try_into_vec::<f32>().unwrap();
        // half = 2: frequencies 1 and 10000^(-1/2) = 0.01; cos first.
        let expected = [
            1.0,
            1.0,
            0.0,
            0.0,
            10f32.cos(),
            0.1f32.cos(),
            10f32.sin(),
            0.1f32.sin(),
        ];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }
}
