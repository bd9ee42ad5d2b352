//! FLUX.1 as ComfyUI users keep it: the transformer as one file under Black Forest Labs'
//! names (`flux1-dev.safetensors`), the VAE as BFL's `ae.safetensors` (LDM names), and the
//! text encoders as separate files or folders (`clip_l.safetensors`, `t5xxl_fp16.safetensors`).
//!
//! BFL's transformer names map to diffusers' as diffusers' single-file converter
//! (`convert_flux_transformer_checkpoint_to_diffusers`) maps them, per tensor on read:
//! `img_in` → `x_embedder`, `txt_in` → `context_embedder`, `time_in`/`vector_in`/`guidance_in`
//! `.{in,out}_layer` → `time_text_embed.{timestep,text,guidance}_embedder.linear_{1,2}`;
//! per double block, `img_attn.qkv` (q, k, v stacked) → `attn.to_{q,k,v}`, `txt_attn.qkv` →
//! `attn.add_{q,k,v}_proj`, `{img,txt}_attn.norm.{query,key}_norm.scale` → the RMS q/k norms,
//! `{img,txt}_attn.proj` → `attn.to_out.0`/`attn.to_add_out`, `{img,txt}_mod.lin` →
//! `norm1{,_context}.linear`, `{img,txt}_mlp.{0,2}` → `ff{,_context}.net.{0.proj,2}`; per
//! single block, `linear1` (q, k, v and the MLP input stacked) → `attn.to_{q,k,v}` and
//! `proj_mlp`, `linear2` → `proj_out`, `modulation.lin` → `norm.linear`; `final_layer.linear`
//! → `proj_out`, and `final_layer.adaLN_modulation.1` → `norm_out.linear` with its two halves
//! swapped (BFL's shift-then-scale against diffusers' scale-then-shift). Keys under
//! `model.diffusion_model.` (some ComfyUI saves) are read too.
//!
//! Without a config folder, the transformer's block counts and guidance embeddings are read
//! from the file and every width is FLUX.1's; the text encoders and VAE given as files get
//! FLUX.1's configs (CLIP ViT-L, T5 v1.1 XXL, the 16-channel VAE). Tokenizers come from the
//! config folder or from the text encoders' folders.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::json;

use super::config::FluxTransformerConfig;
use super::model::{FluxModel, FluxModelConfig, MAX_SEQUENCE_LENGTH, tokenizer_max_length};
use super::scheduler::FlowMatchConfig;
use crate::clip::tokenizer::has_tokenizer;
use crate::clip::{ClipTextConfig, ClipTokenizer};
use crate::error::{Error, Result};
use crate::pipeline::single_file::{VAE_PREFIX, vae_key};
use crate::pipeline::weights_file;
use crate::t5::{T5Config, T5EncoderModel, T5Tokenizer};
use crate::tensor_file::{HostTensor, TensorFile};
use crate::vae::VaeConfig;
use crate::weights::{Renamed, Weights, open_weights, torch_keys};

/// The prefix some ComfyUI saves put before BFL's names.
pub const COMFY_PREFIX: &str = "model.diffusion_model.";

/// Where the parts of a FLUX.1 model other than the transformer are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxParts {
    /// The CLIP text model: a transformers folder (`config.json`, `model.safetensors`), or a
    /// file (`clip_l.safetensors`, transformers names with or without `text_model.`).
    pub clip: PathBuf,
    /// The T5 encoder: a transformers folder (single or sharded), or a file
    /// (`t5xxl_fp16.safetensors`, transformers names).
    pub t5: PathBuf,
    /// The VAE: BFL's `ae.safetensors` (LDM names, with or without `first_stage_model.`), or a
    /// diffusers `vae/` folder.
    pub vae: PathBuf,
    /// A diffusers FLUX.1 folder whose configs, tokenizers and scheduler are used (its
    /// weights are not read); FLUX.1's configs when `None`.
    pub config: Option<PathBuf>,
}

impl FluxParts {
    /// Every part from a diffusers FLUX.1 folder (`text_encoder/`, `text_encoder_2/`, `vae/`
    /// and its configs), for a transformer file that replaces the folder's transformer.
    pub fn from_folder(dir: &Path) -> Self {
        Self {
            clip: dir.join("text_encoder"),
            t5: dir.join("text_encoder_2"),
            vae: dir.join("vae"),
            config: Some(dir.to_path_buf()),
        }
    }

    fn config_file(&self, sub: &str) -> Option<PathBuf> {
        self.config
            .as_ref()
            .map(|d| d.join(sub))
            .filter(|p| p.is_file())
    }
}

/// FLUX.1's VAE config (`vae/config.json` of FLUX.1-dev).
pub fn flux_vae_config() -> VaeConfig {
    VaeConfig::from_diffusers(&json!({
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": false,
        "use_post_quant_conv": false
    }))
    .expect("FLUX.1's VAE config is valid")
}

/// FLUX.1-schnell's scheduler: no dynamic shifting, shift 1.
pub fn flux_schnell_scheduler() -> FlowMatchConfig {
    FlowMatchConfig {
        use_dynamic_shifting: false,
        shift: 1.0,
        ..FlowMatchConfig::flux_dev()
    }
}

/// The block indices present under `prefix` (`double_blocks.`), checked to be `0..n`.
fn block_count(path: &Path, names: &BTreeSet<String>, prefix: &str) -> Result<usize> {
    let indices: BTreeSet<usize> = names
        .iter()
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    if let Some(missing) = (0..indices.len()).find(|i| !indices.contains(i)) {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            reason: format!(
                "`{prefix}{missing}.*` is missing although blocks up to {} are there",
                indices.last().copied().unwrap_or(0)
            ),
        });
    }
    Ok(indices.len())
}

/// The transformer config of a BFL file: `config` when given (checked against the file's block
/// counts and guidance embeddings), otherwise FLUX.1's with those read from the file.
pub fn bfl_transformer_config(
    path: &Path,
    names: &BTreeSet<String>,
    config: Option<FluxTransformerConfig>,
) -> Result<FluxTransformerConfig> {
    let doubles = block_count(path, names, "double_blocks.")?;
    let singles = block_count(path, names, "single_blocks.")?;
    let guidance = names.iter().any(|n| n.starts_with("guidance_in."));
    if doubles == 0 {
        let hint = if names.iter().any(|n| n.starts_with("transformer_blocks.")) {
            "diffusers names: load the diffusers folder instead"
        } else {
            "no `double_blocks.*` keys"
        };
        return Err(Error::Unsupported {
            field: "checkpoint layout".into(),
            value: path.display().to_string(),
            hint: format!("not a Black Forest Labs FLUX.1 transformer ({hint})"),
        });
    }
    let Some(config) = config else {
        return Ok(FluxTransformerConfig {
            num_layers: doubles,
            num_single_layers: singles,
            guidance_embeds: guidance,
            ..FluxTransformerConfig::new()
        });
    };
    let counts = [
        ("num_layers", config.num_layers, doubles, "double_blocks"),
        (
            "num_single_layers",
            config.num_single_layers,
            singles,
            "single_blocks",
        ),
    ];
    for (field, expected, found, what) in counts {
        if expected != found {
            return Err(Error::invalid(
                format!("transformer.{field}"),
                expected,
                format!("{} has {found} `{what}`", path.display()),
            ));
        }
    }
    if config.guidance_embeds != guidance {
        return Err(Error::invalid(
            "transformer.guidance_embeds",
            config.guidance_embeds,
            format!(
                "{} {} `guidance_in` (dev has it, schnell does not)",
                path.display(),
                if guidance { "has" } else { "lacks" }
            ),
        ));
    }
    Ok(config)
}

/// A BFL transformer file read under diffusers' names.
pub struct BflTransformer<'f> {
    file: &'f TensorFile,
    prefix: &'static str,
    /// Token width (`num_attention_heads · attention_head_dim`).
    inner: usize,
}

impl<'f> BflTransformer<'f> {
    /// A view of `file` for a transformer of token width `inner`.
    pub fn new(file: &'f TensorFile, inner: usize) -> Self {
        let prefix = if file.names().iter().any(|n| n.starts_with(COMFY_PREFIX)) {
            COMFY_PREFIX
        } else {
            ""
        };
        Self {
            file,
            prefix,
            inner,
        }
    }

    /// The BFL key holding diffusers' `key`, and which rows of it: `(part, widths)` of a
    /// stacked tensor, or a swap of halves.
    fn locate(&self, key: &str) -> Option<(String, Slice)> {
        let (module, kind) = key.rsplit_once('.')?;
        let plain = |m: String| Some((format!("{m}.{kind}"), Slice::All));
        let embedders = [
            ("time_text_embed.timestep_embedder", "time_in"),
            ("time_text_embed.text_embedder", "vector_in"),
            ("time_text_embed.guidance_embedder", "guidance_in"),
        ];
        for (from, to) in embedders {
            if let Some(linear) = module.strip_prefix(from) {
                let layer = match linear {
                    ".linear_1" => "in_layer",
                    ".linear_2" => "out_layer",
                    _ => return None,
                };
                return plain(format!("{to}.{layer}"));
            }
        }
        match module {
            "x_embedder" => return plain("img_in".into()),
            "context_embedder" => return plain("txt_in".into()),
            "proj_out" => return plain("final_layer.linear".into()),
            "norm_out.linear" => {
                return Some((
                    format!("final_layer.adaLN_modulation.1.{kind}"),
                    Slice::SwapHalves,
                ));
            }
            _ => {}
        }
        if let Some(rest) = module.strip_prefix("transformer_blocks.") {
            let (i, sub) = rest.split_once('.')?;
            let b = format!("double_blocks.{i}");
            let qkv = |stream: &str, part: usize| {
                Some((
                    format!("{b}.{stream}_attn.qkv.{kind}"),
                    Slice::Part(part, vec![self.inner; 3]),
                ))
            };
            let norm = |n: &str| Some((format!("{b}.{n}.scale"), Slice::All));
            return match sub {
                "attn.to_q" => qkv("img", 0),
                "attn.to_k" => qkv("img", 1),
                "attn.to_v" => qkv("img", 2),
                "attn.add_q_proj" => qkv("txt", 0),
                "attn.add_k_proj" => qkv("txt", 1),
                "attn.add_v_proj" => qkv("txt", 2),
                "attn.norm_q" => norm("img_attn.norm.query_norm"),
                "attn.norm_k" => norm("img_attn.norm.key_norm"),
                "attn.norm_added_q" => norm("txt_attn.norm.query_norm"),
                "attn.norm_added_k" => norm("txt_attn.norm.key_norm"),
                "attn.to_out.0" => plain(format!("{b}.img_attn.proj")),
                "attn.to_add_out" => plain(format!("{b}.txt_attn.proj")),
                "norm1.linear" => plain(format!("{b}.img_mod.lin")),
                "norm1_context.linear" => plain(format!("{b}.txt_mod.lin")),
                "ff.net.0.proj" => plain(format!("{b}.img_mlp.0")),
                "ff.net.2" => plain(format!("{b}.img_mlp.2")),
                "ff_context.net.0.proj" => plain(format!("{b}.txt_mlp.0")),
                "ff_context.net.2" => plain(format!("{b}.txt_mlp.2")),
                _ => None,
            };
        }
        if let Some(rest) = module.strip_prefix("single_transformer_blocks.") {
            let (i, sub) = rest.split_once('.')?;
            let b = format!("single_blocks.{i}");
            let widths = vec![self.inner, self.inner, self.inner, 4 * self.inner];
            let linear1 = |part: usize| {
                Some((
                    format!("{b}.linear1.{kind}"),
                    Slice::Part(part, widths.clone()),
                ))
            };
            return match sub {
                "attn.to_q" => linear1(0),
                "attn.to_k" => linear1(1),
                "attn.to_v" => linear1(2),
                "proj_mlp" => linear1(3),
                "attn.norm_q" => Some((format!("{b}.norm.query_norm.scale"), Slice::All)),
                "attn.norm_k" => Some((format!("{b}.norm.key_norm.scale"), Slice::All)),
                "proj_out" => plain(format!("{b}.linear2")),
                "norm.linear" => plain(format!("{b}.modulation.lin")),
                _ => None,
            };
        }
        None
    }
}

/// Which rows of a BFL tensor a diffusers tensor is.
enum Slice {
    All,
    /// Part `i` of rows stacked with these widths.
    Part(usize, Vec<usize>),
    /// The two halves of the rows, swapped.
    SwapHalves,
}

fn rows(t: &HostTensor, from: usize, to: usize) -> HostTensor {
    let row: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = to - from;
    HostTensor::new(shape, t.data[from * row..to * row].to_vec())
}

impl Weights for BflTransformer<'_> {
    fn read(&self, key: &str) -> Result<HostTensor> {
        let Some((bfl, slice)) = self.locate(key) else {
            return Err(Error::MissingTensor {
                name: format!("(no BFL name for `{key}`)"),
                path: self.file.path().to_path_buf(),
            });
        };
        let name = format!("{}{bfl}", self.prefix);
        let t = self.file.read(&name)?;
        let n = t.shape.first().copied().unwrap_or(0);
        match slice {
            Slice::All => Ok(t),
            Slice::SwapHalves => {
                if n % 2 != 0 {
                    return Err(Error::Parse {
                        path: self.file.path().to_path_buf(),
                        reason: format!("`{name}` has {n} rows, not shift and scale halves"),
                    });
                }
                let (shift, scale) = (rows(&t, 0, n / 2), rows(&t, n / 2, n));
                let mut data = scale.data;
                data.extend(shift.data);
                Ok(HostTensor::new(t.shape, data))
            }
            Slice::Part(i, widths) => {
                let total: usize = widths.iter().sum();
                if n != total {
                    return Err(Error::ShapeMismatch {
                        name,
                        path: self.file.path().to_path_buf(),
                        expected: std::iter::once(total)
                            .chain(t.shape[1..].iter().copied())
                            .collect(),
                        found: t.shape,
                    });
                }
                let start: usize = widths[..i].iter().sum();
                Ok(rows(&t, start, start + widths[i]))
            }
        }
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    /// As the default, but a mis-shaped tensor is named by its BFL key.
    fn read_shaped(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.read(key)?;
        if t.shape == expected {
            return Ok(t);
        }
        let bfl = self.locate(key).map_or_else(|| key.to_string(), |(b, _)| b);
        Err(Error::ShapeMismatch {
            name: format!("{}{bfl} (diffusers `{key}`)", self.prefix),
            path: self.file.path().to_path_buf(),
            expected: expected.to_vec(),
            found: t.shape,
        })
    }
}

/// A text encoder's config: the folder's own, the config folder's, or `default`.
fn part_config<C>(
    part: &Path,
    from_config: Option<PathBuf>,
    read: impl Fn(&Path) -> Result<C>,
    default: impl FnOnce() -> C,
) -> Result<C> {
    if part.is_dir() {
        return read(&part.join("config.json"));
    }
    match from_config {
        Some(p) => read(&p),
        None => Ok(default()),
    }
}

/// `part` must exist; the error names the field.
fn existing(field: &str, part: &Path) -> Result<()> {
    if part.exists() {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            part.display(),
            "no such file or folder",
        ))
    }
}

impl FluxModel {
    /// Loads a BFL transformer file with the other parts from `parts` (see the module docs).
    ///
    /// # Errors
    ///
    /// A missing part names its field (`parts.clip`, ...); a transformer file that is not in
    /// BFL's layout, whose block counts or guidance embeddings disagree with the config, or
    /// whose tensors do not fit is refused naming the key; tokenizers that cannot be found
    /// are named.
    pub fn load_single_file(
        transformer: &Path,
        parts: &FluxParts,
        device: &Device,
    ) -> Result<Self> {
        for (field, p) in [
            ("parts.clip", &parts.clip),
            ("parts.t5", &parts.t5),
            ("parts.vae", &parts.vae),
        ] {
            existing(field, p)?;
        }
        if let Some(dir) = &parts.config {
            existing("parts.config", dir)?;
        }
        let file = TensorFile::open(transformer)?;
        let names: BTreeSet<String> = file
            .names()
            .into_iter()
            .map(|n| {
                n.strip_prefix(COMFY_PREFIX)
                    .map_or(n.clone(), str::to_string)
            })
            .collect();
        let folder_config = parts
            .config_file("transformer/config.json")
            .map(FluxTransformerConfig::from_file)
            .transpose()?;
        let transformer_config = bfl_transformer_config(transformer, &names, folder_config)?;
        let guidance = transformer_config.guidance_embeds;

        let vae_config = match (&parts.vae, parts.config_file("vae/config.json")) {
            (v, _) if v.is_dir() => VaeConfig::from_file(v.join("config.json"))?,
            (_, Some(p)) => VaeConfig::from_file(p)?,
            (_, None) => flux_vae_config(),
        };
        let clip_config = part_config(
            &parts.clip,
            parts.config_file("text_encoder/config.json"),
            |p| ClipTextConfig::from_file(p),
            ClipTextConfig::sd15,
        )?;
        let t5_config = part_config(
            &parts.t5,
            parts.config_file("text_encoder_2/config.json"),
            |p| T5Config::from_file(p),
            T5Config::new,
        )?;
        let scheduler = match parts.config_file("scheduler/scheduler_config.json") {
            Some(p) => FlowMatchConfig::from_file(p)?,
            None if guidance => FlowMatchConfig::flux_dev(),
            None => flux_schnell_scheduler(),
        };
        let max_sequence_length = match &parts.config {
            Some(dir) => tokenizer_max_length(&dir.join("tokenizer_2"))?,
            None => None,
        };
        let config = FluxModelConfig {
            transformer: transformer_config,
            vae: vae_config,
            text_encoder: clip_config,
            text_encoder_2: t5_config,
            scheduler,
            max_sequence_length: max_sequence_length.unwrap_or(MAX_SEQUENCE_LENGTH),
        };
        config.validate()?;

        let model = config.transformer.init(device);
        let view = BflTransformer::new(&file, config.transformer.inner_dim());
        let transformer_model = model.load_weights(&view)?;
        let vae = config.vae.init(device);
        let vae = if parts.vae.is_dir() {
            let f = TensorFile::open(weights_file(&parts.vae, "diffusion_pytorch_model")?)?;
            vae.load_weights(&f)?
        } else {
            let ae = TensorFile::open(&parts.vae)?;
            let prefixed = ae.names().iter().any(|n| n.starts_with(VAE_PREFIX));
            let levels = vae.encoder.down_blocks.len();
            let names: HashMap<String, String> = torch_keys(&vae, "")
                .into_iter()
                .map(|k| {
                    let ldm = vae_key(&k, levels);
                    let ldm = if prefixed {
                        ldm
                    } else {
                        ldm[VAE_PREFIX.len()..].to_string()
                    };
                    (k, ldm)
                })
                .collect();
            vae.load_weights(&Renamed::new(&ae, names))?
        };
        let clip = config.text_encoder.init(device);
        let clip = if parts.clip.is_dir() {
            clip.load_weights(open_weights(&parts.clip, "model")?.as_ref())?
        } else {
            clip.load_weights(&TensorFile::open(&parts.clip)?)?
        };
        let t5: T5EncoderModel = config.text_encoder_2.init(device);
        let t5 = if parts.t5.is_dir() {
            t5.load_dir(&parts.t5)?
        } else {
            t5.load_file(&parts.t5)?
        };
        let clip_tokenizer = [
            parts.config.as_ref().map(|d| d.join("tokenizer")),
            Some(parts.clip.clone()),
        ]
        .into_iter()
        .flatten()
        .find(|d| has_tokenizer(d))
        .ok_or_else(|| {
            Error::invalid(
                "parts.config",
                parts
                    .config
                    .as_ref()
                    .map_or("none".into(), |d| d.display().to_string()),
                "the CLIP tokenizer (vocab.json and merges.txt) is in neither the config \
                 folder's tokenizer/ nor the CLIP folder: give a diffusers FLUX.1 folder",
            )
        })?;
        let spiece = [
            parts.config.as_ref().map(|d| d.join("tokenizer_2")),
            Some(parts.t5.clone()),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.join("spiece.model"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::invalid(
                "parts.config",
                parts
                    .config
                    .as_ref()
                    .map_or("none".into(), |d| d.display().to_string()),
                "the T5 tokenizer (spiece.model) is in neither the config folder's tokenizer_2/ \
                 nor the T5 folder: give a diffusers FLUX.1 folder",
            )
        })?;
        Ok(Self {
            transformer: transformer_model,
            vae,
            clip,
            clip_tokenizer: ClipTokenizer::from_dir(clip_tokenizer)?,
            t5,
            t5_tokenizer: T5Tokenizer::from_file(spiece)?,
            config,
            source: transformer.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flux1_names(doubles: usize, singles: usize, guidance: bool) -> BTreeSet<String> {
        let mut names: BTreeSet<String> =
            ["img_in.weight", "txt_in.weight", "time_in.in_layer.weight"]
                .into_iter()
                .map(String::from)
                .collect();
        if guidance {
            names.insert("guidance_in.in_layer.weight".into());
        }
        for i in 0..doubles {
            names.insert(format!("double_blocks.{i}.img_attn.qkv.weight"));
        }
        for i in 0..singles {
            names.insert(format!("single_blocks.{i}.linear1.weight"));
        }
        names
    }

    #[test]
    fn counts_and_guidance_are_read_from_the_file() {
        let p = Path::new("flux1-dev.safetensors");
        let c = bfl_transformer_config(p, &flux1_names(19, 38, true), None).unwrap();
        assert_eq!(c, FluxTransformerConfig::flux_dev());
        let c = bfl_transformer_config(p, &flux1_names(19, 38, false), None).unwrap();
        assert_eq!(c, FluxTransformerConfig::flux_schnell());
        let c = bfl_transformer_config(p, &flux1_names(8, 2, true), None).unwrap();
        assert_eq!((c.num_layers, c.num_single_layers), (8, 2));
    }

    #[test]
    fn inconsistent_files_are_refused_by_name() {
        let p = Path::new("flux1-dev.safetensors");
        let mut gap = flux1_names(19, 38, true);
        gap.retain(|n| !n.starts_with("double_blocks.4."));
        let e = bfl_transformer_config(p, &gap, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("double_blocks.4"), "{e}");
        let e = bfl_transformer_config(
            p,
            &flux1_names(19, 38, false),
            Some(FluxTransformerConfig::flux_dev()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("guidance_embeds") && e.contains("lacks"), "{e}");
        let e = bfl_transformer_config(
            p,
            &flux1_names(18, 38, true),
            Some(FluxTransformerConfig::flux_dev()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_layers") && e.contains("18"), "{e}");
        let diffusers: BTreeSet<String> = ["transformer_blocks.0.attn.to_q.weight".to_string()]
            .into_iter()
            .collect();
        let e = bfl_transformer_config(p, &diffusers, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("diffusers"), "{e}");
    }

    #[test]
    fn the_default_parts_are_flux1s() {
        let vae = flux_vae_config();
        assert_eq!(vae.latent_channels, 16);
        assert!(!vae.use_quant_conv);
        assert_eq!(vae.downscale_factor(), 8);
        assert!(!flux_schnell_scheduler().use_dynamic_shifting);
    }
}
