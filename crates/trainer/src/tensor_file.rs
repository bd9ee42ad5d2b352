//! Reading and writing safetensors files as `f32` host tensors.
//!
//! Weights come as fp32, fp16 or bf16; the trainer computes in fp32, so every tensor is
//! widened on read. Writing can narrow again (kohya LoRA files are usually fp16).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData, bf16, f16};
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo, View};

use crate::error::{Error, Result};

/// A tensor in host memory, row-major, always `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Builds a host tensor, checking that `data` fills `shape`.
    ///
    /// # Panics
    ///
    /// If `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "host tensor shape {shape:?} does not match {} elements",
            data.len()
        );
        Self { shape, data }
    }

    /// A zero-dimensional tensor holding one value (kohya's `alpha`).
    pub fn scalar(value: f32) -> Self {
        Self {
            shape: Vec::new(),
            data: vec![value],
        }
    }

    /// Copies a device tensor to the host.
    pub fn from_tensor<const D: usize>(tensor: Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted tensor data is f32");
        Self { shape, data }
    }

    /// Uploads to `device` as a rank-`D` tensor.
    ///
    /// # Panics
    ///
    /// If the rank is not `D`; callers check shapes first.
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        assert_eq!(self.shape.len(), D, "host tensor rank");
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// The same data under another shape with the same number of elements.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), self.data.len());
        self.shape = shape;
        self
    }

    /// The transpose of a matrix.
    pub fn transposed(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "transpose of a non-matrix");
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            data,
        }
    }
}

/// A safetensors file read into memory, its header parsed once.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    header: Metadata,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors().len())
            .finish()
    }
}

impl TensorFile {
    /// Reads and parses a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::read(&path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses safetensors bytes; `path` is only used in messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let (header_len, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::Parse {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path,
            bytes,
            data_start: 8 + header_len,
            header,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.header.info(name).is_some()
    }

    /// The shape of a tensor, if it exists.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.header.info(name).map(|info| info.shape.as_slice())
    }

    /// The `__metadata__` string map of the header (kohya's `ss_*` keys live here).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// Reads a tensor as `f32`, widening fp16/bf16 and narrowing fp64.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let info = self.header.info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.path.clone(),
        })?;
        let bytes = self.raw(info);
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    path: self.path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    /// Reads a tensor and checks its shape.
    pub fn read_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let tensor = self.read(name)?;
        if tensor.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                path: self.path.clone(),
                expected: expected.to_vec(),
                found: tensor.shape,
            });
        }
        Ok(tensor)
    }

    /// Reads an integer tensor (timesteps in fixtures) as `i64`.
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>> {
        let info = self.header.info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.path.clone(),
        })?;
        let bytes = self.raw(info);
        match info.dtype {
            Dtype::I64 => Ok(bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()),
            Dtype::I32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                .collect()),
            other => Err(Error::UnsupportedDtype {
                name: name.to_string(),
                path: self.path.clone(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn raw(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        &self.bytes[self.data_start + start..self.data_start + end]
    }
}

/// Element type used when writing a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// 32-bit floats: exact.
    #[default]
    F32,
    /// IEEE half precision, what sd-scripts writes with `--save_precision fp16`.
    F16,
    /// bfloat16.
    Bf16,
}

struct EncodedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &EncodedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(tensor: &HostTensor, dtype: SaveDtype) -> EncodedTensor {
    let (dtype, bytes) = match dtype {
        SaveDtype::F32 => (
            Dtype::F32,
            tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        SaveDtype::F16 => (
            Dtype::F16,
            tensor
                .data
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        SaveDtype::Bf16 => (
            Dtype::BF16,
            tensor
                .data
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    };
    EncodedTensor {
        dtype,
        shape: tensor.shape.clone(),
        bytes,
    }
}

/// Serialises named tensors and header metadata to safetensors bytes.
pub fn to_bytes(
    path_for_errors: &Path,
    tensors: &[(String, HostTensor)],
    metadata: HashMap<String, String>,
    dtype: SaveDtype,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, EncodedTensor)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), encode(t, dtype)))
        .collect();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::tensor::serialize(encoded.iter().map(|(n, t)| (n.as_str(), t)), metadata).map_err(
        |e| Error::Parse {
            path: path_for_errors.to_path_buf(),
            reason: e.to_string(),
        },
    )
}

/// Writes named tensors and header metadata to a safetensors file.
///
/// The file is written to a sibling temporary path first and renamed, so a reader never sees a
/// half-written LoRA.
pub fn write(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: HashMap<String, String>,
    dtype: SaveDtype,
) -> Result<()> {
    let bytes = to_bytes(path, tensors, metadata, dtype)?;
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::write(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::write(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_every_dtype() {
        let t = HostTensor::new(vec![2, 3], vec![0.5, -1.0, 2.0, 0.25, 3.0, -0.125]);
        for dtype in [SaveDtype::F32, SaveDtype::F16, SaveDtype::Bf16] {
            let mut meta = HashMap::new();
            meta.insert("k".to_string(), "v".to_string());
            let bytes =
                to_bytes(Path::new("mem"), &[("w".into(), t.clone())], meta, dtype).unwrap();
            let file = TensorFile::from_bytes("mem", bytes).unwrap();
            // Every value above is exact in fp16 and bf16.
            assert_eq!(file.read("w").unwrap(), t);
            assert_eq!(file.metadata().get("k").map(String::as_str), Some("v"));
        }
    }

    #[test]
    fn missing_and_misshaped_tensors_are_named() {
        let t = HostTensor::new(vec![2], vec![1.0, 2.0]);
        let bytes = to_bytes(
            Path::new("mem"),
            &[("a.weight".into(), t)],
            HashMap::new(),
            SaveDtype::F32,
        )
        .unwrap();
        let file = TensorFile::from_bytes("mem.safetensors", bytes).unwrap();
        let err = file.read("b.weight").unwrap_err().to_string();
        assert!(err.contains("`b.weight` is missing"), "{err}");
        let err = file.read_shaped("a.weight", &[3]).unwrap_err().to_string();
        assert!(err.contains("shape [2], expected [3]"), "{err}");
    }

    #[test]
    fn transpose_moves_elements() {
        let t = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let tt = t.transposed();
        assert_eq!(tt.shape, vec![3, 2]);
        assert_eq!(tt.data, vec![1., 4., 2., 5., 3., 6.]);
    }
}
