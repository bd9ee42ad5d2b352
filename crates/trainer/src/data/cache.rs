//! On-disk caches of VAE latents and text-encoder states, keyed by content digests, so a
//! resumed or repeated run does not encode again.
//!
//! A latent's key is SHA-256 over the image file's bytes, its bucket, and the VAE's identity;
//! a text state's key covers the caption, `clip_skip` and the text encoder's identity. A
//! model's identity is its config and the path, length and modification time of its weights
//! file (hashing gigabytes of weights at every start would cost more than it saves).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::tensor_file::{self, HostTensor, SaveDtype, TensorFile};

/// A cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// A model's identity for cache keys.
pub fn model_identity(config: &impl serde::Serialize, weights: &Path) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(config).expect("configs serialise"));
    h.update(weights.to_string_lossy().as_bytes());
    if let Ok(meta) = std::fs::metadata(weights) {
        h.update(meta.len().to_le_bytes());
        if let Ok(modified) = meta.modified()
            && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
        {
            h.update(since.as_nanos().to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a latent: image bytes, bucket and VAE identity.
    pub fn latent_key(image_bytes: &[u8], bucket: (usize, usize), vae: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"latent\0");
        h.update(image_bytes);
        h.update((bucket.0 as u64).to_le_bytes());
        h.update((bucket.1 as u64).to_le_bytes());
        h.update(vae.as_bytes());
        hex::encode(h.finalize())
    }

    /// The key of a text state: caption, `clip_skip` and text-encoder identity.
    pub fn text_key(caption: &str, clip_skip: usize, text_encoder: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"text\0");
        h.update(caption.as_bytes());
        h.update((clip_skip as u64).to_le_bytes());
        h.update(text_encoder.as_bytes());
        hex::encode(h.finalize())
    }

    fn path(&self, kind: &str, key: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{key}.safetensors"))
    }

    /// A cached tensor, if present and readable (a damaged entry counts as absent).
    pub fn get(&self, kind: &str, key: &str) -> Option<HostTensor> {
        let path = self.path(kind, key);
        TensorFile::open(&path).ok()?.read("value").ok()
    }

    /// Stores a tensor (written to a temporary name and renamed, so readers never see half a
    /// file).
    pub fn put(&self, kind: &str, key: &str, value: &HostTensor) -> Result<()> {
        let path = self.path(kind, key);
        let dir = path.parent().expect("a file in a folder");
        std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::write(dir, e))?;
        tensor_file::write(
            &path,
            &[("value".to_string(), value.clone())],
            Default::default(),
            SaveDtype::F32,
        )
    }
}
