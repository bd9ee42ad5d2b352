//! SDXL single-file checkpoints in Stability's SGM layout (`sd_xl_base_1.0.safetensors` and
//! the fine-tunes model sites distribute):
//!
//! - UNet under `model.diffusion_model.` (the LDM numbering of [`crate::pipeline::single_file`],
//!   plus `label_emb.0.{0,2}` for the added-conditioning MLP);
//! - VAE under `first_stage_model.`;
//! - CLIP ViT-L under `conditioner.embedders.0.transformer.` (transformers names);
//! - OpenCLIP bigG under `conditioner.embedders.1.model.`: `token_embedding.weight`,
//!   `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (q, k
//!   and v stacked), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final` and
//!   `text_projection` stored `[hidden, projection]` (the transpose of the linear's weight).
//!
//! The conversion is diffusers' `convert_open_clip_checkpoint` and single-file UNet/VAE
//! converters, done per tensor on read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::text::{SdxlTextEncoders, SdxlTokenizers};
use super::{SdxlConfig, StableDiffusionXl};
use crate::clip::ClipTokenizer;
use crate::error::{Error, Result};
use crate::pipeline::single_file::{UNET_PREFIX, VAE_PREFIX, unet_key, unet_prefixes, vae_key};
use crate::tensor_file::{HostTensor, TensorFile};
use crate::weights::{Renamed, Weights, torch_keys};

/// Prefix of the first text encoder.
pub const TE1_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Prefix of the second (OpenCLIP) text encoder.
pub const TE2_PREFIX: &str = "conditioner.embedders.1.model.";

/// The second text encoder's weights under transformers names, read from OpenCLIP's.
pub struct OpenClipView<'f> {
    file: &'f TensorFile,
}

impl<'f> OpenClipView<'f> {
    /// A view of the `conditioner.embedders.1.model.*` tensors of `file`.
    pub fn new(file: &'f TensorFile) -> Self {
        Self { file }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingTensor {
            name: key.to_string(),
            path: self.file.path().to_path_buf(),
        }
    }

    /// Rows `part·n .. (part+1)·n` of a stacked `[3n, ...]` tensor.
    fn third(&self, key: &str, file_key: &str, part: usize) -> Result<HostTensor> {
        let t = self.file.read(file_key)?;
        let rows = t.shape[0] / 3;
        if rows * 3 != t.shape[0] {
            return Err(Error::Parse {
                path: self.file.path().to_path_buf(),
                reason: format!(
                    "`{file_key}` has {} rows, not q, k and v stacked (for `{key}`)",
                    t.shape[0]
                ),
            });
        }
        let row: usize = t.shape[1..].iter().product();
        let mut shape = t.shape.clone();
        shape[0] = rows;
        let data = t.data[part * rows * row..(part + 1) * rows * row].to_vec();
        Ok(HostTensor::new(shape, data))
    }
}

impl Weights for OpenClipView<'_> {
    fn read(&self, key: &str) -> Result<HostTensor> {
        let p = TE2_PREFIX;
        let k = key.strip_prefix("text_model.").unwrap_or(key);
        match k {
            "text_projection.weight" => {
                return Ok(self.file.read(&format!("{p}text_projection"))?.transposed());
            }
            "embeddings.token_embedding.weight" => {
                return self.file.read(&format!("{p}token_embedding.weight"));
            }
            "embeddings.position_embedding.weight" => {
                return self.file.read(&format!("{p}positional_embedding"));
            }
            _ => {}
        }
        if let Some(rest) = k.strip_prefix("final_layer_norm.") {
            return self.file.read(&format!("{p}ln_final.{rest}"));
        }
        let Some(rest) = k.strip_prefix("encoder.layers.") else {
            return Err(self.missing(key));
        };
        let (layer, rest) = rest.split_once('.').ok_or_else(|| self.missing(key))?;
        let base = format!("{p}transformer.resblocks.{layer}.");
        for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            if let Some(kind) = rest.strip_prefix(&format!("self_attn.{proj}.")) {
                return self.third(key, &format!("{base}attn.in_proj_{kind}"), i);
            }
        }
        let renamed = rest
            .replacen("layer_norm1.", "ln_1.", 1)
            .replacen("layer_norm2.", "ln_2.", 1)
            .replacen("self_attn.out_proj.", "attn.out_proj.", 1)
            .replacen("mlp.fc1.", "mlp.c_fc.", 1)
            .replacen("mlp.fc2.", "mlp.c_proj.", 1);
        self.file.read(&format!("{base}{renamed}"))
    }

    fn path(&self) -> &Path {
        self.file.path()
    }
}

fn refuse_other_layouts(file: &TensorFile) -> Result<()> {
    let names = file.names();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if !has(TE1_PREFIX) || !has(TE2_PREFIX) || !has(UNET_PREFIX) {
        return Err(Error::Unsupported {
            field: "checkpoint layout".into(),
            value: file.path().display().to_string(),
            hint: format!(
                "an SDXL single file has `{UNET_PREFIX}*`, `{TE1_PREFIX}*` and `{TE2_PREFIX}*` \
                 keys (SD1.x files load as StableDiffusion; a refiner has no first encoder)"
            ),
        });
    }
    Ok(())
}

impl StableDiffusionXl {
    /// Loads an SGM single-file checkpoint with the component configs and tokenizers of
    /// `config_dir` (a diffusers SDXL folder of the same architecture; its weights are not
    /// read).
    pub fn load_single_file(
        path: impl AsRef<Path>,
        config_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let config = SdxlConfig::from_dir(config_dir)?;
        let file = TensorFile::open(path.as_ref())?;
        refuse_other_layouts(&file)?;
        let unet = config.unet.init(device);
        let vae = config.vae.init(device);
        let prefixes = unet_prefixes(&config.unet);
        let mut unet_names = HashMap::new();
        for key in torch_keys(&unet, "") {
            let ldm = unet_key(&key, &prefixes).ok_or_else(|| Error::Parse {
                path: file.path().to_path_buf(),
                reason: format!("no SGM name for UNet parameter `{key}`"),
            })?;
            unet_names.insert(key, ldm);
        }
        let levels = vae.encoder.down_blocks.len();
        let vae_names: HashMap<String, String> = torch_keys(&vae, "")
            .into_iter()
            .map(|k| {
                let ldm = vae_key(&k, levels);
                (k, ldm)
            })
            .collect();
        debug_assert!(vae_names.values().all(|v| v.starts_with(VAE_PREFIX)));
        let te1 = config.text_encoder.init(device);
        let te1_names: HashMap<String, String> = torch_keys(&te1, "")
            .into_iter()
            .map(|k| {
                let file_key = format!("{TE1_PREFIX}{k}");
                (k, file_key)
            })
            .collect();
        let te2 = config.text_encoder_2.init(device);
        Ok(Self {
            unet: unet.load_weights(&Renamed::new(&file, unet_names))?,
            vae: vae.load_weights(&Renamed::new(&file, vae_names))?,
            text: SdxlTextEncoders {
                text_encoder: te1.load_weights(&Renamed::new(&file, te1_names))?,
                text_encoder_2: te2.load_weights(&OpenClipView::new(&file))?,
            },
            tokenizers: SdxlTokenizers {
                tokenizer: ClipTokenizer::from_dir(&config.tokenizer_dir)?,
                tokenizer_2: ClipTokenizer::from_dir(&config.tokenizer_2_dir)?,
            },
            config,
            source: PathBuf::from(path.as_ref()),
        })
    }
}
