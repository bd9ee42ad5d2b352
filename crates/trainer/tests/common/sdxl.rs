//! The tiny SDXL fixture: diffusers' pipeline-test UNet (`sdxl/pipeline/unet`) and the inputs
//! and output diffusers recorded for it (`sdxl/unet_io.safetensors`).

use burn::tensor::{Device, Tensor, TensorData};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::unet::{AddedConditions, UNet2DConditionModel, UNetConfig};

use super::fixture;

/// The fixture UNet's config.
pub fn unet_config() -> UNetConfig {
    UNetConfig::from_file(fixture("sdxl/pipeline/unet/config.json")).unwrap()
}

/// The fixture UNet with diffusers' weights (parameters still require gradients).
pub fn pipeline_unet(device: &Device) -> UNet2DConditionModel {
    unet_config()
        .init(device)
        .load_diffusers(fixture(
            "sdxl/pipeline/unet/diffusion_pytorch_model.safetensors",
        ))
        .unwrap()
}

/// The recorded batch: latents, timesteps, text context, added conditioning, diffusers' output.
pub struct UnetIo {
    pub sample: Tensor<4>,
    pub timesteps: Tensor<1>,
    pub context: Tensor<3>,
    pub added: AddedConditions,
    pub out: HostTensor,
}

/// Reads `sdxl/unet_io.safetensors` onto `device`.
pub fn unet_io(device: &Device) -> UnetIo {
    let io = TensorFile::open(fixture("sdxl/unet_io.safetensors")).unwrap();
    let t: Vec<f32> = io
        .read_i64("timesteps")
        .unwrap()
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let n = t.len();
    UnetIo {
        sample: io.read("sample").unwrap().to_tensor(device),
        timesteps: Tensor::from_data(TensorData::new(t, [n]), device),
        context: io.read("encoder_hidden_states").unwrap().to_tensor(device),
        added: AddedConditions {
            text_embeds: io.read("text_embeds").unwrap().to_tensor(device),
            time_ids: io.read("time_ids").unwrap().to_tensor(device),
        },
        out: io.read("out").unwrap(),
    }
}

/// `unet`'s output on the recorded batch.
pub fn forward(unet: &UNet2DConditionModel, device: &Device) -> Tensor<4> {
    let io = unet_io(device);
    unet.forward_added(io.sample, io.timesteps, io.context, Some(&io.added))
        .unwrap()
}

/// [`forward`] read back to the host.
pub fn forward_host(unet: &UNet2DConditionModel, device: &Device) -> HostTensor {
    HostTensor::from_tensor(forward(unet, device))
}
