//! The FLUX.1-shaped VAE against diffusers' `AutoencoderKL` (fixture `fixtures/flux/vae`, from
//! `fixtures/make_flux_fixtures.py`): 16 latent channels, no quant convs, the shift and scaling
//! factors read from the config; mean, log-variance, the training latents `(mean − shift)·scale`
//! and the decoding of `latents / scale + shift`, all within 1e-4 (fp32).
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::vae::VaeConfig;

#[test]
fn flux_vae_encodes_and_decodes_as_diffusers() {
    let device = Device::flex();
    let config = VaeConfig::from_file(fixture("flux/vae/config.json")).unwrap();
    assert_eq!(config.latent_channels, 16);
    assert_eq!(config.shift_factor, 0.1159);
    assert_eq!(config.scaling_factor, 0.3611);
    assert!(!config.use_quant_conv && !config.use_post_quant_conv);
    let weights =
        TensorFile::open(fixture("flux/vae/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(!weights.names().iter().any(|n| n.contains("quant_conv")));
    let vae = config.init(&device).load_weights(&weights).unwrap();
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());

    let io = TensorFile::open(fixture("flux/vae/io.safetensors")).unwrap();
    let image: Tensor<4> = io.read("image").unwrap().to_tensor(&device);
    let check = |name: &str, got: Tensor<4>| {
        let expected = io.read(name).unwrap();
        let got = HostTensor::from_tensor(got);
        assert_eq!(got.shape, expected.shape, "{name}");
        let err = max_abs_diff(&got, &expected);
        println!(
            "flux vae {name}: max abs error {err:e} (scale {})",
            max_abs(&expected)
        );
        assert!(err <= 1e-4, "{name} off by {err}");
    };
    let (mean, logvar) = vae.encode(image.clone());
    check("mean", mean);
    check("logvar", logvar);
    check("latents", vae.encode_latents(image));
    let latents_in: Tensor<4> = io.read("latents_in").unwrap().to_tensor(&device);
    check("decoded", vae.decode_latents(latents_in));
}

#[test]
fn a_vae_without_mid_block_attention_is_refused_by_name() {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("flux/vae/config.json")).unwrap())
            .unwrap();
    value["mid_block_add_attention"] = serde_json::Value::Bool(false);
    let err = VaeConfig::from_diffusers(&value).unwrap_err().to_string();
    assert!(err.contains("mid_block_add_attention"), "{err}");
}
