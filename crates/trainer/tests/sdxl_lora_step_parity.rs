//! One LoRA training step of the SDXL UNet against PyTorch + PEFT (fixture
//! `fixtures/sdxl/lora_step`): same base weights, adapters, batch, added conditioning, noise and
//! timesteps; the loss and every adapter gradient within 1e-4 relative (fp32), ε-prediction with
//! min-SNR-5 and offset noise. The reference is PyTorch's step in float64: its own fp32 step is
//! up to ~5e-5 relative away from it on this model (recorded in the fixture's header).
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::sdxl::pipeline_unet;
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::lora::{LayerMut, LoraLayers, load_peft};
use loraflow_trainer::schedule::{NoiseSchedule, Prediction};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss_added};
use loraflow_trainer::unet::{AddedConditions, UNet2DConditionModel};

fn peft_model(device: &Device) -> UNet2DConditionModel {
    let mut unet = pipeline_unet(device).no_grad();
    let loaded = load_peft(
        &mut unet,
        &fixture("sdxl/lora_step/lora_init.safetensors"),
        "unet",
        Some(8.0),
        device,
    )
    .unwrap();
    assert_eq!(loaded.modules.len(), 156, "every PEFT module found a layer");
    unet
}

#[test]
fn sdxl_loss_and_gradients_match_peft() {
    let device = Device::flex().autodiff();
    let f = TensorFile::open(fixture("sdxl/lora_step/batch.safetensors")).unwrap();
    let expected = TensorFile::open(fixture("sdxl/lora_step/expected.safetensors")).unwrap();
    let noise = StepNoise {
        timesteps: f
            .read_i64("timesteps")
            .unwrap()
            .into_iter()
            .map(|t| t as usize)
            .collect(),
        noise: f.read("noise").unwrap(),
        offset: f.read("offset_noise").unwrap(),
    };
    let added = AddedConditions {
        text_embeds: f.read("text_embeds").unwrap().to_tensor(&device),
        time_ids: f.read("time_ids").unwrap().to_tensor(&device),
    };
    let objective = Objective {
        prediction: Prediction::Epsilon,
        noise_offset: 0.1,
        min_snr_gamma: Some(5.0),
    };
    let mut unet = peft_model(&device);
    let loss = diffusion_loss_added(
        &unet,
        &NoiseSchedule::stable_diffusion(),
        &objective,
        f.read("latents").unwrap().to_tensor(&device),
        f.read("encoder_hidden_states").unwrap().to_tensor(&device),
        Some(&added),
        &noise,
    )
    .unwrap();
    let ours = loss.clone().into_scalar::<f32>();
    let want = expected.read("epsilon.loss").unwrap().data[0];
    println!("sdxl loss {ours} vs {want}");
    assert!(
        (ours - want).abs() <= 1e-4 * want.abs(),
        "loss {ours} vs {want}"
    );

    let grads = loss.backward();
    let mut worst = 0.0f32;
    let mut worst_at = String::new();
    let mut compared = 0;
    for (path, layer) in unet.layers() {
        if !layer.has_adapter() {
            continue;
        }
        let (a, b) = match &layer {
            LayerMut::Linear(l) => {
                let a = l.lora.as_ref().unwrap();
                (
                    HostTensor::from_tensor(a.down.grad(&grads).unwrap()).transposed(),
                    HostTensor::from_tensor(a.up.grad(&grads).unwrap()).transposed(),
                )
            }
            LayerMut::Conv(c) => {
                let a = c.lora.as_ref().unwrap();
                (
                    HostTensor::from_tensor(a.down.grad(&grads).unwrap()),
                    HostTensor::from_tensor(a.up.grad(&grads).unwrap()),
                )
            }
        };
        for (factor, ours) in [("lora_A", a), ("lora_B", b)] {
            let e = expected
                .read(&format!("epsilon.grad.{path}.{factor}.weight"))
                .unwrap();
            let rel = max_abs_diff(&ours, &e) / max_abs(&e).max(1e-12);
            assert!(rel <= 1e-4, "{path}.{factor}: relative error {rel}");
            if rel > worst {
                worst = rel;
                worst_at = format!("{path}.{factor}");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 312);
    println!(
        "sdxl gradients: worst relative error {worst:e} ({worst_at}) over {compared} tensors \
         against float64 \
         (PyTorch fp32: {})",
        expected.metadata()["torch_fp32_worst_relative_error"]
    );
}
