//! The UNet's resolution levels: down blocks, the mid block and up blocks.
//!
//! diffusers has separate classes with and without cross-attention (`DownBlock2D` /
//! `CrossAttnDownBlock2D`, ...). Here one type each, with an empty `attentions` list for the
//! plain variants; the parameter paths are the same either way.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};
use super::transformer::{Transformer2DModel, Transformer2DModelConfig};
use crate::lora::{LayerMut, LoraLayers, join};

/// Settings shared by every block of a UNet.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Resnet GroupNorm epsilon.
    pub eps: f64,
    /// Linear `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
}

/// The cross-attention part of a block, when it has one.
#[derive(Debug, Clone, Copy)]
pub struct CrossAttention {
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks per Transformer2DModel.
    pub layers: usize,
    /// Width of the text-encoder states.
    pub cross_attention_dim: usize,
}

fn transformer(
    channels: usize,
    cross: CrossAttention,
    s: &BlockSettings,
    device: &Device,
) -> Transformer2DModel {
    Transformer2DModelConfig::new(channels, cross.heads, cross.cross_attention_dim, s.groups)
        .with_layers(cross.layers)
        .with_use_linear_projection(s.use_linear_projection)
        .init(device)
}

fn resnet(c_in: usize, c_out: usize, s: &BlockSettings, device: &Device) -> ResnetBlock2D {
    ResnetBlock2DConfig::new(c_in, c_out, s.temb_channels, s.groups)
        .with_eps(s.eps)
        .init(device)
}

/// A down block: `layers` resnets (each followed by a transformer when cross-attending) and an
/// optional downsampler.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// Transformers, one per resnet, or none.
    pub attentions: Vec<Transformer2DModel>,
    /// Zero or one downsampler.
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    /// Builds a down block.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        cross: Option<CrossAttention>,
        downsample: Option<usize>,
        s: &BlockSettings,
        device: &Device,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| resnet(if i == 0 { c_in } else { c_out }, c_out, s, device))
                .collect(),
            attentions: cross
                .map(|cross| {
                    (0..layers)
                        .map(|_| transformer(c_out, cross, s, device))
                        .collect()
                })
                .unwrap_or_default(),
            downsamplers: downsample
                .map(|padding| {
                    Downsample2DConfig::new(c_out)
                        .with_padding(padding)
                        .init(device)
                })
                .into_iter()
                .collect(),
        }
    }

    /// Applies the block, pushing every intermediate state onto `skips`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, c_in, height, width]`
    /// - output: `[batch, c_out, height', width']` (halved when downsampling)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

impl LoraLayers for DownBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.resnets.collect_layers(&join(prefix, "resnets"), out);
        self.attentions
            .collect_layers(&join(prefix, "attentions"), out);
        self.downsamplers
            .collect_layers(&join(prefix, "downsamplers"), out);
    }
}

/// The mid block: resnet, transformer, resnet.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer.
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// Builds the mid block.
    pub fn new(
        channels: usize,
        cross: CrossAttention,
        output_scale_factor: f64,
        s: &BlockSettings,
        device: &Device,
    ) -> Self {
        let resnet = || {
            ResnetBlock2DConfig::new(channels, channels, s.temb_channels, s.groups)
                .with_eps(s.eps)
                .with_output_scale_factor(output_scale_factor)
                .init(device)
        };
        Self {
            resnets: vec![resnet(), resnet()],
            attentions: vec![transformer(channels, cross, s, device)],
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, channels, height, width]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, temb.clone());
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, context.clone());
            x = resnet.forward(x, temb.clone());
        }
        x
    }
}

impl LoraLayers for MidBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.resnets.collect_layers(&join(prefix, "resnets"), out);
        self.attentions
            .collect_layers(&join(prefix, "attentions"), out);
    }
}

/// An up block: resnets fed with concatenated skip connections (each followed by a transformer
/// when cross-attending) and an optional upsampler.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// Transformers, one per resnet, or none.
    pub attentions: Vec<Transformer2DModel>,
    /// Zero or one upsampler.
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// Builds an up block as diffusers' `get_up_block` does: resnet `j` takes the previous
    /// output (`prev_out` for the first) concatenated with a skip of `skip_channels[j]`.
    pub fn new(
        skip_channels: &[usize],
        prev_out: usize,
        c_out: usize,
        cross: Option<CrossAttention>,
        upsample: bool,
        s: &BlockSettings,
        device: &Device,
    ) -> Self {
        let layers = skip_channels.len();
        Self {
            resnets: skip_channels
                .iter()
                .enumerate()
                .map(|(j, &skip)| {
                    let c_in = if j == 0 { prev_out } else { c_out };
                    resnet(c_in + skip, c_out, s, device)
                })
                .collect(),
            attentions: cross
                .map(|cross| {
                    (0..layers)
                        .map(|_| transformer(c_out, cross, s, device))
                        .collect()
                })
                .unwrap_or_default(),
            upsamplers: upsample
                .then(|| Upsample2DConfig::new(c_out).init(device))
                .into_iter()
                .collect(),
        }
    }

    /// Applies the block, popping one skip per resnet from `skips`. The upsampler targets the
    /// resolution of the next skip still on the stack.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, prev_out, height, width]`
    /// - output: `[batch, c_out, height', width']` (doubled when upsampling)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path pushed one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
        }
        for up in &self.upsamplers {
            let [_, _, h, w] = skips
                .last()
                .expect("an upsampler is followed by more skips")
                .dims();
            x = up.forward(x, [h, w]);
        }
        x
    }
}

impl LoraLayers for UpBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.resnets.collect_layers(&join(prefix, "resnets"), out);
        self.attentions
            .collect_layers(&join(prefix, "attentions"), out);
        self.upsamplers
            .collect_layers(&join(prefix, "upsamplers"), out);
    }
}
