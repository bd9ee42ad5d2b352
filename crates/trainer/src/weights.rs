//! Loading diffusers/transformers weights into any model of this crate.
//!
//! A model's module tree is walked with a burn [`ModuleMapper`]; each parameter's burn path is
//! turned into its PyTorch key by a few renames (norm `gamma`/`beta` → `weight`/`bias`,
//! `to_out` → `to_out.0`, the feed-forward's `net.0.proj`/`net.2`, enum variants and Flux's
//! grouping of the added text projections dropped) and
//! looked up in a [`Weights`] source. Linear weights are transposed from PyTorch's `[out, in]` to
//! burn's `[in, out]`. fp16 and bf16 files are widened to fp32.
//!
//! Sources are a safetensors file ([`TensorFile`]), the shards of a large model through their
//! index ([`ShardedFiles`], [`open_weights`]) or a view of one with other key names
//! ([`Renamed`], used for the original LDM single-file layout).

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::tensor_file::{HostTensor, TensorFile};

/// Named tensors to load parameters from.
pub trait Weights {
    /// The tensor stored under `key` (diffusers/transformers name), widened to `f32`.
    fn read(&self, key: &str) -> Result<HostTensor>;

    /// The file the tensors come from (for messages).
    fn path(&self) -> &Path;

    /// Reads a tensor and checks its shape. A `[.., 1, 1]` tensor is accepted for a 2-D shape
    /// with the same leading dimensions (1×1 convolutions stored for linears).
    fn read_shaped(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let tensor = self.read(key)?;
        if tensor.shape == expected {
            return Ok(tensor);
        }
        let squeezable = tensor.shape.len() == expected.len() + 2
            && tensor.shape[..expected.len()] == *expected
            && tensor.shape[expected.len()..].iter().all(|&d| d == 1);
        if squeezable {
            return Ok(tensor.reshaped(expected.to_vec()));
        }
        Err(Error::ShapeMismatch {
            name: key.to_string(),
            path: self.path().to_path_buf(),
            expected: expected.to_vec(),
            found: tensor.shape,
        })
    }
}

impl Weights for TensorFile {
    fn read(&self, key: &str) -> Result<HostTensor> {
        TensorFile::read(self, key)
    }

    fn path(&self) -> &Path {
        TensorFile::path(self)
    }
}

/// A view of a file under other key names: `names` maps the key a model asks for to the key in
/// the file.
#[derive(Debug)]
pub struct Renamed<'f> {
    file: &'f TensorFile,
    names: HashMap<String, String>,
}

impl<'f> Renamed<'f> {
    /// `names`: model key → file key.
    pub fn new(file: &'f TensorFile, names: HashMap<String, String>) -> Self {
        Self { file, names }
    }

    /// The number of mapped keys.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Weights for Renamed<'_> {
    fn read(&self, key: &str) -> Result<HostTensor> {
        match self.names.get(key) {
            Some(file_key) => self.file.read(file_key),
            None => Err(Error::MissingTensor {
                name: key.to_string(),
                path: self.file.path().to_path_buf(),
            }),
        }
    }

    fn path(&self) -> &Path {
        self.file.path()
    }
}

/// The shards of a model saved in pieces (`model.safetensors.index.json` beside
/// `model-00001-of-00002.safetensors`, ...; transformers' and diffusers' layout for large
/// models such as FLUX's T5-XXL and transformer), read through the index's `weight_map`.
#[derive(Debug)]
pub struct ShardedFiles {
    index: std::path::PathBuf,
    files: Vec<TensorFile>,
    /// Tensor name → position in `files`.
    map: HashMap<String, usize>,
}

/// The most shards an index may name.
pub const MAX_SHARDS: usize = 1024;

impl ShardedFiles {
    /// Reads an index file and every shard it names (shard paths relative to the index's
    /// folder, without `..` or absolute paths).
    pub fn open(index: impl AsRef<Path>) -> Result<Self> {
        let index = index.as_ref();
        let parse = |reason: String| Error::Parse {
            path: index.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(index).map_err(|e| Error::read(index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
        let map = value
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| parse("no `weight_map` object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        let mut names = HashMap::new();
        for (name, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| parse(format!("`weight_map.{name}` is not a file name")))?;
            let plain = Path::new(shard)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(parse(format!(
                    "`weight_map.{name}` = {shard:?}: expected a file inside the index's folder"
                )));
            }
            let at = match shards.iter().position(|s| s == shard) {
                Some(at) => at,
                None => {
                    if shards.len() == MAX_SHARDS {
                        return Err(parse(format!("more than {MAX_SHARDS} shards")));
                    }
                    shards.push(shard.to_string());
                    shards.len() - 1
                }
            };
            names.insert(name.clone(), at);
        }
        let files = shards
            .iter()
            .map(|s| TensorFile::open(dir.join(s)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            index: index.to_path_buf(),
            files,
            map: names,
        })
    }
}

impl Weights for ShardedFiles {
    fn read(&self, key: &str) -> Result<HostTensor> {
        match self.map.get(key) {
            Some(&at) => self.files[at].read(key),
            None => Err(Error::MissingTensor {
                name: key.to_string(),
                path: self.index.clone(),
            }),
        }
    }

    fn path(&self) -> &Path {
        &self.index
    }
}

/// The weights `stem.safetensors` in `dir`, or its shards through `stem.safetensors.index.json`
/// (`stem` is `model` for transformers, `diffusion_pytorch_model` for diffusers).
pub fn open_weights(dir: &Path, stem: &str) -> Result<Box<dyn Weights>> {
    let single = dir.join(format!("{stem}.safetensors"));
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if !single.is_file() && index.is_file() {
        return Ok(Box::new(ShardedFiles::open(index)?));
    }
    Ok(Box::new(TensorFile::open(single)?))
}

/// A source that also answers keys without a leading `prefix` (transformers 5 saves
/// `CLIPTextModel` without the `text_model.` level that older files and LDM checkpoints have).
pub struct OptionalPrefix<'a> {
    inner: &'a dyn Weights,
    prefix: &'a str,
}

impl<'a> OptionalPrefix<'a> {
    /// Wraps `inner`; `prefix` includes its trailing dot.
    pub fn new(inner: &'a dyn Weights, prefix: &'a str) -> Self {
        Self { inner, prefix }
    }
}

impl Weights for OptionalPrefix<'_> {
    fn read(&self, key: &str) -> Result<HostTensor> {
        match self.inner.read(key) {
            Err(Error::MissingTensor { .. }) if key.starts_with(self.prefix) => self
                .inner
                .read(&key[self.prefix.len()..])
                .map_err(|e| match e {
                    // Name the key as the model asked for it.
                    Error::MissingTensor { path, .. } => Error::MissingTensor {
                        name: key.to_string(),
                        path,
                    },
                    e => e,
                }),
            other => other,
        }
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }
}

/// Renames a burn path segment, given the struct it belongs to, to its PyTorch spelling.
fn torch_segment<'a>(name: &'a str, container: &str) -> &'a str {
    match (container, name) {
        ("Struct:Attention" | "Struct:VaeAttention", "to_out") => "to_out.0",
        ("Struct:FeedForward", "geglu_proj") => "net.0.proj",
        ("Struct:FeedForward", "out") => "net.2",
        ("Struct:FluxAttention", "to_out") => "to_out.0",
        // The text projections of a Flux joint attention sit directly under the attention.
        ("Struct:FluxAttention", "added") => "",
        ("Struct:FluxFeedForward", "proj") => "net.0.proj",
        ("Struct:FluxFeedForward", "out") => "net.2",
        ("Struct:T5Stack", "relative_attention_bias") => {
            "block.0.layer.0.SelfAttention.relative_attention_bias"
        }
        ("Struct:T5Block", "attention") => "layer.0",
        ("Struct:T5Block", "ff") => "layer.1",
        ("Struct:T5LayerSelfAttention", "self_attention") => "SelfAttention",
        ("Struct:T5LayerFf", "dense_relu_dense") => "DenseReluDense",
        ("Struct:GroupNorm" | "Struct:LayerNorm", "gamma") => "weight",
        ("Struct:GroupNorm" | "Struct:LayerNorm", "beta") => "bias",
        _ => name,
    }
}

/// The PyTorch key of the parameter at `stack`, or `None` for adapter factors (which are not
/// part of a base checkpoint).
fn torch_key(prefix: &str, stack: &[(String, String)]) -> Option<String> {
    let mut parts = Vec::with_capacity(stack.len() + 1);
    if !prefix.is_empty() {
        parts.push(prefix);
    }
    for (name, container) in stack {
        if name == "lora" {
            return None;
        }
        if container.starts_with("Enum:") {
            continue;
        }
        let segment = torch_segment(name, container);
        if !segment.is_empty() {
            parts.push(segment);
        }
    }
    Some(parts.join("."))
}

/// Loads matching tensors from a source into every parameter of the tree.
struct Loader<'w> {
    weights: &'w dyn Weights,
    prefix: &'w str,
    /// `(segment, container type)` from the root to the current parameter.
    stack: Vec<(String, String)>,
    error: Option<Error>,
}

impl Loader<'_> {
    fn is_linear_weight(&self) -> bool {
        matches!(self.stack.last(), Some((name, container)) if name == "weight" && container == "Struct:LoraLinear")
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let Some(key) = torch_key(self.prefix, &self.stack) else {
            return param;
        };
        let ours = param.lazy_shape().dims::<D>().to_vec();
        let transpose = self.is_linear_weight() && D == 2;
        let expected = if transpose {
            vec![ours[1], ours[0]]
        } else {
            ours
        };
        match self.weights.read_shaped(&key, &expected) {
            Ok(host) => {
                let host = if transpose { host.transposed() } else { host };
                let device = param.lazy_device();
                Param::initialized(param.id, host.to_tensor::<D>(&device))
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Loads every parameter of `module` from `weights`, keys prefixed with `prefix` (empty for
/// none). The first missing or mis-shaped tensor is reported by name; unused keys are ignored.
/// Loaded weights are frozen (they do not require gradients).
pub fn load_module<M: Module>(module: M, weights: &dyn Weights, prefix: &str) -> Result<M> {
    let mut loader = Loader {
        weights,
        prefix,
        stack: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    match loader.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// The PyTorch key of every base parameter of `module`, in model order.
pub fn torch_keys<M: Module>(module: &M, prefix: &str) -> Vec<String> {
    struct Keys<'p> {
        prefix: &'p str,
        stack: Vec<(String, String)>,
        keys: Vec<String>,
    }
    impl ModuleVisitor for Keys<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            if let Some(key) = torch_key(self.prefix, &self.stack) {
                self.keys.push(key);
            }
        }
    }
    let mut keys = Keys {
        prefix,
        stack: Vec::new(),
        keys: Vec::new(),
    };
    module.visit(&mut keys);
    keys.keys
}

/// Every base parameter of `module` under its PyTorch key, as host tensors in PyTorch's layout
/// (linear weights transposed back to `[out, in]`), in model order: what a diffusers or
/// transformers weights file of the module holds. Adapter factors are left out.
pub fn torch_tensors<M: Module>(module: &M, prefix: &str) -> Vec<(String, HostTensor)> {
    struct Tensors<'p> {
        prefix: &'p str,
        stack: Vec<(String, String)>,
        out: Vec<(String, HostTensor)>,
    }
    impl ModuleVisitor for Tensors<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(key) = torch_key(self.prefix, &self.stack) else {
                return;
            };
            let linear_weight = matches!(self.stack.last(),
                Some((name, container)) if name == "weight" && container == "Struct:LoraLinear");
            let host = HostTensor::from_tensor(param.val());
            let host = if linear_weight && D == 2 {
                host.transposed()
            } else {
                host
            };
            self.out.push((key, host));
        }
    }
    let mut tensors = Tensors {
        prefix,
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut tensors);
    tensors.out
}
