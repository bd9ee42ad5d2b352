//! A 2-D convolution that can carry a LoRA adapter (kohya's LoCon for 3×3 kernels).
//!
//! burn's built-in LoRA only adapts 2-D weights, so convolution adapters are implemented here,
//! in kohya's form: a `k×k` down convolution to `rank` channels with the base layer's stride and
//! padding, then a 1×1 up convolution.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, FloatDType, Tensor};

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::tensor_file::HostTensor;

/// Configuration of a [`LoraConv2d`].
#[derive(Config, Debug)]
pub struct LoraConv2dConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Square kernel size.
    pub kernel_size: usize,
    /// Stride in both directions.
    #[config(default = 1)]
    pub stride: usize,
    /// Zero padding on every side.
    #[config(default = 0)]
    pub padding: usize,
}

impl LoraConv2dConfig {
    /// A layer with PyTorch's default initialisation and no adapter.
    pub fn init(&self, device: &Device) -> LoraConv2d {
        let fan_in = self.channels_in * self.kernel_size * self.kernel_size;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        LoraConv2d {
            weight: init.init(
                [
                    self.channels_out,
                    self.channels_in,
                    self.kernel_size,
                    self.kernel_size,
                ],
                device,
            ),
            bias: Some(init.init([self.channels_out], device)),
            stride: self.stride,
            padding: self.padding,
            lora: None,
        }
    }
}

/// `y = conv(x, W) + b + (alpha / rank) · up(down(x))`, `W` frozen, `down` and `up` trained.
#[derive(Module, Debug)]
pub struct LoraConv2d {
    /// Base kernel, `[out, in, k, k]` (the PyTorch layout).
    pub weight: Param<Tensor<4>>,
    /// Base bias, `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// The adapter, when this layer is a LoRA target.
    pub lora: Option<ConvAdapter>,
}

/// The low-rank factors of a [`LoraConv2d`], in kohya's layout.
#[derive(Module, Debug)]
pub struct ConvAdapter {
    /// Down convolution, `[rank, in, k, k]`.
    pub down: Param<Tensor<4>>,
    /// Up convolution, `[out, rank, 1, 1]`.
    pub up: Param<Tensor<4>>,
    /// kohya's alpha; the update is scaled by `alpha / rank`.
    pub alpha: f64,
}

impl ConvAdapter {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }
}

impl LoraConv2d {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }

    /// Applies the layer.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, channels_in, height, width]`
    /// - output: `[batch, channels_out, height_out, width_out]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let weight = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        let base = if weight.dtype() == x.dtype() {
            conv2d(x.clone(), weight, bias, self.options())
        } else {
            // A base stored in another precision (`store_base`) computes in it.
            let (stored, wanted) = (weight.dtype(), x.dtype());
            conv2d(x.clone().cast(stored), weight, bias, self.options()).cast(wanted)
        };
        match &self.lora {
            None => base,
            Some(lora) => {
                let low = conv2d(x, lora.down.val(), None, self.options());
                let up = conv2d(
                    low,
                    lora.up.val(),
                    None,
                    ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
                );
                base + up.mul_scalar(lora.scale())
            }
        }
    }

    /// Input channels.
    pub fn channels_in(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output channels.
    pub fn channels_out(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Kernel size.
    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[2]
    }

    /// Attaches a fresh adapter as kohya does: down kaiming-uniform (a = √5), up zero.
    pub fn attach(&mut self, rank: usize, alpha: f64, rng: &mut SeededRng, device: &Device) {
        let (c_in, c_out, k) = (self.channels_in(), self.channels_out(), self.kernel_size());
        let fan_in = c_in * k * k;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let down = HostTensor::new(
            vec![rank, c_in, k, k],
            rng.uniform(rank * fan_in, -bound, bound),
        );
        let up = HostTensor::new(vec![c_out, rank, 1, 1], vec![0.0; c_out * rank]);
        self.lora = Some(ConvAdapter {
            down: Param::from_tensor(down.to_tensor(device)),
            up: Param::from_tensor(up.to_tensor(device)),
            alpha,
        });
    }

    /// Installs factors in kohya layout: `down` `[r, in, k, k]`, `up` `[out, r, 1, 1]`.
    ///
    /// For 1×1 kernels, 2-D factors (`[r, in]`, `[out, r]`) are accepted as well.
    pub fn set_factors(
        &mut self,
        name: &str,
        down: HostTensor,
        up: HostTensor,
        alpha: f64,
        device: &Device,
    ) -> Result<()> {
        let (c_in, c_out, k) = (self.channels_in(), self.channels_out(), self.kernel_size());
        let unsqueeze = |t: HostTensor| {
            if t.shape.len() == 2 && k == 1 {
                let shape = vec![t.shape[0], t.shape[1], 1, 1];
                t.reshaped(shape)
            } else {
                t
            }
        };
        let (down, up) = (unsqueeze(down), unsqueeze(up));
        let rank = down.shape.first().copied().unwrap_or(0);
        let expect_down = vec![rank, c_in, k, k];
        let expect_up = vec![c_out, rank, 1, 1];
        if down.shape != expect_down || up.shape != expect_up {
            return Err(Error::invalid(
                name,
                format!("down {:?}, up {:?}", down.shape, up.shape),
                format!("expected down {expect_down:?} and up {expect_up:?} for this layer"),
            ));
        }
        self.lora = Some(ConvAdapter {
            down: Param::from_tensor(down.to_tensor(device)),
            up: Param::from_tensor(up.to_tensor(device)),
            alpha,
        });
        Ok(())
    }

    /// The adapter's factors in kohya layout and its alpha.
    pub fn factors(&self) -> Option<(HostTensor, HostTensor, f64)> {
        self.lora.as_ref().map(|lora| {
            (
                HostTensor::from_tensor(lora.down.val()),
                HostTensor::from_tensor(lora.up.val()),
                lora.alpha,
            )
        })
    }

    /// Folds the adapter into the base kernel:
    /// `W[o, i, y, x] += (alpha / rank) · Σ_r up[o, r] · down[r, i, y, x]`.
    pub fn merge(&mut self) {
        if let Some(lora) = self.lora.take() {
            let [c_out, c_in, k, _] = self.weight.dims();
            let rank = lora.rank();
            let up = lora.up.val().reshape([c_out, rank]);
            let down = lora.down.val().reshape([rank, c_in * k * k]);
            let delta = up
                .matmul(down)
                .reshape([c_out, c_in, k, k])
                .mul_scalar(lora.scale());
            let stored = self.weight.val().dtype();
            let merged = (self.weight.val().cast(delta.dtype()) + delta)
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

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::rng::Stream;
    use burn::tensor::Tolerance;

    #[test]
    fn conv_adapter_respects_stride_and_merges_exactly() {
        let device = Device::flex();
        let mut layer = LoraConv2dConfig::new(3, 4, 3)
            .with_stride(2)
            .with_padding(1)
            .init(&device);
        let x: Tensor<4> = HostTensor::new(
            vec![2, 3, 7, 7],
            SeededRng::new(0, Stream::Noise).normal(294),
        )
        .to_tensor(&device);
        let before = layer.forward(x.clone());
        assert_eq!(before.dims(), [2, 4, 4, 4]);
        let mut rng = SeededRng::new(0, Stream::LoraInit);
        layer.attach(2, 1.0, &mut rng, &device);
        layer
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&before.clone().into_data(), Tolerance::absolute(1e-7));

        let (down, _, _) = layer.factors().unwrap();
        let up = HostTensor::new(vec![4, 2, 1, 1], rng.normal(8));
        layer.set_factors("c", down, up, 2.0, &device).unwrap();
        let adapted = layer.forward(x.clone());
        let diff = (adapted.clone() - before).abs().max().into_scalar::<f32>();
        assert!(diff > 1e-3, "adapter had no effect");
        layer.merge();
        layer
            .forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&adapted.into_data(), Tolerance::absolute(1e-5));
    }
}
