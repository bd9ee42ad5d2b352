//! Loading a FLUX.1 model (a diffusers folder, or a BFL transformer file with a folder's other
//! parts) for training, and encoding its captions once.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;

use super::super::prepare::component_file;
use super::super::{ProgressEvent, ProgressSink};
use crate::data::cache::{Cache, model_identity};
use crate::error::{Error, Result};
use crate::flux::FluxParts;
use crate::flux::FluxTransformer2DModel;
use crate::flux::model::FluxModel;
use crate::flux::scheduler::FlowMatchConfig;
use crate::tensor_file::HostTensor;
use crate::vae::AutoencoderKL;

/// The conditioning of one caption.
#[derive(Debug, Clone)]
pub(super) struct FluxText {
    /// T5 states `[tokens, joint_attention_dim]`.
    pub t5: HostTensor,
    /// Pooled CLIP text `[pooled_projection_dim]`.
    pub pooled: HostTensor,
}

/// A FLUX.1 model loaded for a run, with the cache identities of its parts.
pub(super) struct LoadedFlux {
    pub model: FluxModel,
    pub vae_identity: String,
    pub text_identity: String,
}

/// A component's `config.json` as text (part of its cache identity); empty when absent.
fn config_text(dir: &Path, component: &str) -> String {
    std::fs::read_to_string(dir.join(component).join("config.json")).unwrap_or_default()
}

impl LoadedFlux {
    /// Loads `model` on `device`: a diffusers FLUX.1 folder, or a BFL transformer file with
    /// the other parts of the diffusers folder `dir` ([`FluxParts::from_folder`]; for a
    /// folder, `dir` is the folder itself). Cache identities come from `dir`'s parts.
    pub fn load(model: &Path, dir: &Path, device: &Device) -> Result<Self> {
        let model = if model.is_dir() {
            FluxModel::load_diffusers(model, device)?
        } else {
            FluxModel::load_single_file(model, &FluxParts::from_folder(dir), device)?
        };
        let vae_identity = model_identity(
            &config_text(dir, "vae"),
            &component_file(dir, "vae", "diffusion_pytorch_model"),
        );
        let text_identity = format!(
            "flux:{}+{}",
            model_identity(
                &config_text(dir, "text_encoder_2"),
                &component_file(dir, "text_encoder_2", "model"),
            ),
            model_identity(
                &config_text(dir, "text_encoder"),
                &component_file(dir, "text_encoder", "model"),
            ),
        );
        Ok(Self {
            model,
            vae_identity,
            text_identity,
        })
    }

    /// T5 states and pooled CLIP text of every distinct caption, computed once (from the cache
    /// when it has them).
    pub fn encode_captions(
        &self,
        captions: &[String],
        cache: &Cache,
        sink: &mut dyn ProgressSink,
        device: &Device,
    ) -> Result<HashMap<String, FluxText>> {
        let mut out: HashMap<String, FluxText> = HashMap::new();
        for (i, caption) in captions.iter().enumerate() {
            if out.contains_key(caption) {
                continue;
            }
            let key = Cache::text_key(caption, 0, &self.text_identity);
            let cached = cache
                .get("flux_t5", &key)
                .zip(cache.get("flux_pooled", &key));
            let text = match cached {
                Some((t5, pooled)) => FluxText { t5, pooled },
                None => {
                    let (t5, pooled) = self.model.encode_prompt(caption, device)?;
                    let text = FluxText {
                        t5: HostTensor::from_tensor(t5.squeeze_dim::<2>(0)),
                        pooled: HostTensor::from_tensor(pooled.squeeze_dim::<1>(0)),
                    };
                    cache.put("flux_t5", &key, &text.t5)?;
                    cache.put("flux_pooled", &key, &text.pooled)?;
                    text
                }
            };
            if text.t5.shape.len() != 2 || text.pooled.shape.len() != 1 {
                return Err(Error::Parse {
                    path: cache.dir().to_path_buf(),
                    reason: format!(
                        "cached text states of {caption:?} have shapes {:?} and {:?}; \
                         expected [tokens, width] and [width]",
                        text.t5.shape, text.pooled.shape
                    ),
                });
            }
            out.insert(caption.clone(), text);
            sink.report(ProgressEvent::Preparing {
                stage: "text",
                done: i + 1,
                total: captions.len(),
            });
        }
        Ok(out)
    }

    /// What denoising needs: the transformer, the VAE and the sampler's schedule; the text
    /// encoders and tokenizers are dropped.
    pub fn into_denoiser(self) -> (FluxTransformer2DModel, AutoencoderKL, FlowMatchConfig) {
        let FluxModel {
            transformer,
            vae,
            config,
            ..
        } = self.model;
        (transformer, vae, config.scheduler)
    }
}
