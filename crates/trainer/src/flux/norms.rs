//! Flux's norms: diffusers' `RMSNorm` (q/k norms), the parameter-free `LayerNorm` and the
//! adaptive norms modulated by the conditioning vector (`AdaLayerNormZero`,
//! `AdaLayerNormZeroSingle`, `AdaLayerNormContinuous`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};

/// Epsilon of every Flux norm.
pub const NORM_EPS: f64 = 1e-6;

/// `LayerNorm` over the last dimension without learned scale or shift
/// (`elementwise_affine=False`), with the biased variance as PyTorch.
///
/// # Shapes
///
/// - x: `[batch, tokens, dim]`
/// - output: `[batch, tokens, dim]`
pub fn layer_norm(x: Tensor<3>, eps: f64) -> Tensor<3> {
    let (var, mean) = x.clone().var_mean_bias(2);
    (x - mean) / var.add_scalar(eps).sqrt()
}

/// Configuration of an [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Width normalised.
    pub dim: usize,
    /// Added to the mean square.
    #[config(default = 1e-6)]
    pub eps: f64,
}

impl RmsNormConfig {
    /// A norm with unit weight.
    pub fn init(&self, device: &Device) -> RmsNorm {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([self.dim], device)),
            eps: self.eps,
        }
    }
}

/// `x / √(mean(x²) + eps) · weight` over the last dimension (diffusers' `RMSNorm` with
/// `elementwise_affine=True`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-feature scale, `[dim]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// # Shapes
    ///
    /// - x: `[..., dim]`
    /// - output: `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean_square = x.clone().square().mean_dim(D - 1);
        let normed = x / mean_square.add_scalar(self.eps).sqrt();
        normed * self.weight.val().unsqueeze::<D>()
    }
}

/// `norm(x) · (1 + scale) + shift` with `scale`, `shift` of shape `[batch, dim]`.
fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    layer_norm(x, NORM_EPS) * scale.add_scalar(1.0).unsqueeze_dim(1) + shift.unsqueeze_dim(1)
}

/// Splits `[batch, n · dim]` into `n` chunks of `[batch, dim]`.
fn chunks<const N: usize>(emb: Tensor<2>) -> [Tensor<2>; N] {
    emb.chunk(N, 1)
        .try_into()
        .expect("the modulation width is a multiple of the chunk count")
}

/// The modulation a double-stream block's [`AdaLayerNormZero`] gives its feed-forward and its
/// residual gates.
#[derive(Debug, Clone)]
pub struct Modulation {
    /// Gate of the attention output, `[batch, dim]`.
    pub gate_msa: Tensor<2>,
    /// Shift of the feed-forward's input norm, `[batch, dim]`.
    pub shift_mlp: Tensor<2>,
    /// Scale of the feed-forward's input norm, `[batch, dim]`.
    pub scale_mlp: Tensor<2>,
    /// Gate of the feed-forward output, `[batch, dim]`.
    pub gate_mlp: Tensor<2>,
}

impl Modulation {
    /// The feed-forward's input: `norm(x) · (1 + scale_mlp) + shift_mlp`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn mlp_input(&self, x: Tensor<3>) -> Tensor<3> {
        modulate(x, self.shift_mlp.clone(), self.scale_mlp.clone())
    }
}

/// Configuration of an [`AdaLayerNormZero`] or [`AdaLayerNormZeroSingle`].
#[derive(Config, Debug)]
pub struct AdaNormConfig {
    /// Token width (and width of the conditioning vector).
    pub dim: usize,
}

impl AdaNormConfig {
    /// The double-stream block's norm: a `dim → 6·dim` modulation.
    pub fn init_zero(&self, device: &Device) -> AdaLayerNormZero {
        AdaLayerNormZero {
            linear: LoraLinearConfig::new(self.dim, 6 * self.dim).init(device),
        }
    }

    /// The single-stream block's norm: a `dim → 3·dim` modulation.
    pub fn init_zero_single(&self, device: &Device) -> AdaLayerNormZeroSingle {
        AdaLayerNormZeroSingle {
            linear: LoraLinearConfig::new(self.dim, 3 * self.dim).init(device),
        }
    }
}

/// diffusers' `AdaLayerNormZero`: `linear(silu(emb))` gives shift, scale and gate of the
/// attention input and output, and of the feed-forward ([`Modulation`]).
#[derive(Module, Debug)]
pub struct AdaLayerNormZero {
    /// The modulation projection, `dim → 6·dim`.
    pub linear: LoraLinear,
}

impl AdaLayerNormZero {
    /// The attention's input `norm(x) · (1 + scale_msa) + shift_msa` and the rest of the
    /// modulation.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - emb: `[batch, dim]`
    /// - output: `[batch, tokens, dim]` and four `[batch, dim]`
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> (Tensor<3>, Modulation) {
        let [
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        ] = chunks::<6>(self.linear.forward(silu(emb)));
        let modulation = Modulation {
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        };
        (modulate(x, shift_msa, scale_msa), modulation)
    }
}

impl LoraLayers for AdaLayerNormZero {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.linear.collect_layers(&join(prefix, "linear"), out);
    }
}

/// diffusers' `AdaLayerNormZeroSingle`: shift, scale and one gate.
#[derive(Module, Debug)]
pub struct AdaLayerNormZeroSingle {
    /// The modulation projection, `dim → 3·dim`.
    pub linear: LoraLinear,
}

impl AdaLayerNormZeroSingle {
    /// `norm(x) · (1 + scale) + shift` and the gate.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - emb: `[batch, dim]`
    /// - output: `[batch, tokens, dim]` and `[batch, dim]`
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        let [shift, scale, gate] = chunks::<3>(self.linear.forward(silu(emb)));
        (modulate(x, shift, scale), gate)
    }
}

impl LoraLayers for AdaLayerNormZeroSingle {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.linear.collect_layers(&join(prefix, "linear"), out);
    }
}

/// Configuration of an [`AdaLayerNormContinuous`].
#[derive(Config, Debug)]
pub struct AdaLayerNormContinuousConfig {
    /// Token width.
    pub dim: usize,
    /// Width of the conditioning vector.
    pub conditioning_dim: usize,
}

impl AdaLayerNormContinuousConfig {
    /// Builds the norm: a `conditioning_dim → 2·dim` modulation.
    pub fn init(&self, device: &Device) -> AdaLayerNormContinuous {
        AdaLayerNormContinuous {
            linear: LoraLinearConfig::new(self.conditioning_dim, 2 * self.dim).init(device),
        }
    }
}

/// diffusers' `AdaLayerNormContinuous` (the output norm): `linear(silu(emb))` gives scale
/// then shift (in that order, unlike the zero norms).
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous {
    /// The modulation projection, `conditioning_dim → 2·dim`.
    pub linear: LoraLinear,
}

impl AdaLayerNormContinuous {
    /// `norm(x) · (1 + scale) + shift`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - emb: `[batch, conditioning_dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> Tensor<3> {
        let [scale, shift] = chunks::<2>(self.linear.forward(silu(emb)));
        modulate(x, shift, scale)
    }
}

impl LoraLayers for AdaLayerNormContinuous {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.linear.collect_layers(&join(prefix, "linear"), out);
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn norms_match_closed_forms() {
        let device = Device::flex();
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 6.0], [1, 1, 4]),
            &device,
        );
        // mean 3, biased variance 3.5.
        let ln = layer_norm(x.clone(), 0.0)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let sd = 3.5f32.sqrt();
        for (a, b) in ln.iter().zip([-2.0 / sd, -1.0 / sd, 0.0, 3.0 / sd]) {
            assert!((a - b).abs() < 1e-6, "{ln:?}");
        }
        let mut rms = RmsNormConfig::new(4).with_eps(0.0).init(&device);
        rms.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0, 1.0, 0.5], [4]),
            &device,
        ));
        // mean square 12.5.
        let r = rms.forward(x).into_data().try_into_vec::<f32>().unwrap();
        let q = 12.5f32.sqrt();
        for (a, b) in r.iter().zip([1.0 / q, 4.0 / q, 3.0 / q, 3.0 / q]) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
    }
}
