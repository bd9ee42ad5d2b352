//! A linear layer that can carry a LoRA adapter.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::linear;
use burn::tensor::{Device, FloatDType, Tensor};

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::tensor_file::HostTensor;

/// Configuration of a [`LoraLinear`].
#[derive(Config, Debug)]
pub struct LoraLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the base layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl LoraLinearConfig {
    /// A layer with PyTorch's default initialisation (U(-1/√in, 1/√in)) and no adapter.
    pub fn init(&self, device: &Device) -> LoraLinear {
        let bound = 1.0 / (self.d_input as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        LoraLinear {
            weight: init.init([self.d_input, self.d_output], device),
            bias: self.bias.then(|| init.init([self.d_output], device)),
            lora: None,
        }
    }
}

/// `y = x W + b + (alpha / rank) · (x A) B`, with `W` frozen and `A`, `B` trained.
///
/// Weights use burn's `[in, out]` layout; PyTorch and kohya store the transposes, which the
/// loaders and savers convert.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight, `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// Base bias, `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, when this layer is a LoRA target.
    pub lora: Option<LinearAdapter>,
}

/// The low-rank factors of a [`LoraLinear`].
#[derive(Module, Debug)]
pub struct LinearAdapter {
    /// Down projection `A`, `[d_input, rank]` (kohya's `lora_down.weight` transposed).
    pub down: Param<Tensor<2>>,
    /// Up projection `B`, `[rank, d_output]` (kohya's `lora_up.weight` transposed).
    pub up: Param<Tensor<2>>,
    /// kohya's alpha; the update is scaled by `alpha / rank`.
    pub alpha: f64,
}

impl LinearAdapter {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.down.dims()[1]
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }
}

impl LoraLinear {
    /// Applies the layer.
    ///
    /// # Shapes
    ///
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// A base stored in another precision than `x` ([`LoraLinear::store_base`]) computes its
    /// product in that precision and returns `x`'s; the adapter always computes in `x`'s.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        let base = if weight.dtype() == x.dtype() {
            linear(x.clone(), weight, bias)
        } else {
            let (stored, wanted) = (weight.dtype(), x.dtype());
            linear(x.clone().cast(stored), weight, bias).cast(wanted)
        };
        match &self.lora {
            None => base,
            Some(lora) => {
                let low = linear(x, lora.down.val(), None);
                base + linear(low, lora.up.val(), None).mul_scalar(lora.scale())
            }
        }
    }

    /// Input features.
    pub fn d_input(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Attaches a fresh adapter the way kohya does: `A` kaiming-uniform (a = √5, i.e.
    /// U(-1/√in, 1/√in)) and `B` zero, so the layer's output is unchanged until trained.
    pub fn attach(&mut self, rank: usize, alpha: f64, rng: &mut SeededRng, device: &Device) {
        let (d_in, d_out) = (self.d_input(), self.d_output());
        let bound = 1.0 / (d_in as f32).sqrt();
        let down = HostTensor::new(vec![rank, d_in], rng.uniform(rank * d_in, -bound, bound));
        let up = HostTensor::new(vec![d_out, rank], vec![0.0; d_out * rank]);
        self.lora = Some(adapter_from_kohya(&down, &up, alpha, device));
    }

    /// Installs factors in kohya/PyTorch layout: `down` `[r, in]`, `up` `[out, r]`.
    ///
    /// 1×1-convolution factors (`[r, in, 1, 1]`, `[out, r, 1, 1]`) are accepted too, since
    /// SD1 and SD2 differ in whether `proj_in`/`proj_out` are convolutions or linears.
    pub fn set_factors(
        &mut self,
        name: &str,
        down: HostTensor,
        up: HostTensor,
        alpha: f64,
        device: &Device,
    ) -> Result<()> {
        let down = squeeze_1x1(down);
        let up = squeeze_1x1(up);
        let rank = down.shape.first().copied().unwrap_or(0);
        let expect_down = vec![rank, self.d_input()];
        let expect_up = vec![self.d_output(), rank];
        if down.shape != expect_down || up.shape != expect_up {
            return Err(Error::invalid(
                name,
                format!("down {:?}, up {:?}", down.shape, up.shape),
                format!("expected down {expect_down:?} and up {expect_up:?} for this layer"),
            ));
        }
        self.lora = Some(adapter_from_kohya(&down, &up, alpha, device));
        Ok(())
    }

    /// The adapter's factors in kohya/PyTorch layout (`[r, in]`, `[out, r]`) and its alpha.
    pub fn factors(&self) -> Option<(HostTensor, HostTensor, f64)> {
        self.lora.as_ref().map(|lora| {
            let down = HostTensor::from_tensor(lora.down.val()).transposed();
            let up = HostTensor::from_tensor(lora.up.val()).transposed();
            (down, up, lora.alpha)
        })
    }

    /// Folds the adapter into the base weight: `W += (alpha / rank) · A B` (in the adapter's
    /// precision, stored back in the base's).
    pub fn merge(&mut self) {
        if let Some(lora) = self.lora.take() {
            let up = lora.up.val();
            let delta = lora.down.val().matmul(up.clone()).mul_scalar(lora.scale());
            let stored = self.weight.val().dtype();
            let merged = (self.weight.val().cast(up.dtype()) + delta)
                .cast(stored)
                .detach();
            self.weight = Param::initialized(self.weight.id, merged);
        }
    }

    /// Stores the frozen base weight and bias in `dtype` (bf16 halves their memory). The
    /// adapter is left as it is; call `no_grad` on the model afterwards to keep the base frozen.
    pub fn store_base(&mut self, dtype: FloatDType) {
        self.weight = Param::initialized(self.weight.id, self.weight.val().cast(dtype).detach());
        if let Some(b) = &self.bias {
            self.bias = Some(Param::initialized(b.id, b.val().cast(dtype).detach()));
        }
    }
}

fn squeeze_1x1(t: HostTensor) -> HostTensor {
    if t.shape.len() == 4 && t.shape[2] == 1 && t.shape[3] == 1 {
        let shape = vec![t.shape[0], t.shape[1]];
        t.reshaped(shape)
    } else {
        t
    }
}

fn adapter_from_kohya(
    down: &HostTensor,
    up: &HostTensor,
    alpha: f64,
    device: &Device,
) -> LinearAdapter {
    LinearAdapter {
        down: Param::from_tensor(down.transposed().to_tensor(device)),
        up: Param::from_tensor(up.transposed().to_tensor(device)),
        alpha,
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::rng::Stream;
    use burn::tensor::Tolerance;

    #[test]
    fn fresh_adapter_leaves_output_unchanged_and_merge_matches() {
        let device = Device::flex();
        let mut layer = LoraLinearConfig::new(6, 5).init(&device);
        let x = Tensor::<3>::from_data(
            HostTensor::new(vec![2, 3, 6], SeededRng::new(0, Stream::Noise).normal(36))
                .to_tensor::<3>(&device)
                .into_data(),
            &device,
        );
        let before = layer.forward(x.clone());
        let mut rng = SeededRng::new(0, Stream::LoraInit);
        layer.attach(2, 1.0, &mut rng, &device);
        layer
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&before.clone().into_data(), Tolerance::absolute(1e-7));

        // A non-zero up factor changes the output, and merging reproduces it.
        let (down, _, _) = layer.factors().unwrap();
        let up = HostTensor::new(vec![5, 2], rng.normal(10));
        layer.set_factors("t", down, up, 4.0, &device).unwrap();
        let adapted = layer.forward(x.clone());
        let diff = (adapted.clone() - before).abs().max().into_scalar::<f32>();
        assert!(diff > 1e-3, "adapter had no effect");
        layer.merge();
        assert!(layer.lora.is_none());
        layer
            .forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&adapted.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn wrong_factor_shapes_are_rejected_with_both_shapes() {
        let device = Device::flex();
        let mut layer = LoraLinearConfig::new(6, 5).init(&device);
        let down = HostTensor::new(vec![2, 7], vec![0.0; 14]);
        let up = HostTensor::new(vec![5, 2], vec![0.0; 10]);
        let err = layer
            .set_factors("x.to_q", down, up, 1.0, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("down [2, 7]"), "{err}");
        assert!(err.contains("expected down [2, 6]"), "{err}");
    }
}
