//! Training data: pre-computed VAE latents and text-encoder hidden states.
//!
//! Encoding images and captions needs the VAE and text encoder; until those run natively, the
//! trainer takes their outputs. A dataset file is a safetensors file with `latents`
//! `[n, channels, height, width]` (already multiplied by the VAE scaling factor, 0.18215 for
//! SD) and `encoder_hidden_states` `[n, tokens, width]`.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::tensor_file::{HostTensor, TensorFile};

/// Latents and text states, one pair per training example.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentDataset {
    latents: HostTensor,
    states: HostTensor,
}

impl LatentDataset {
    /// Pairs `latents` `[n, c, h, w]` with `encoder_hidden_states` `[n, tokens, width]`.
    pub fn new(latents: HostTensor, encoder_hidden_states: HostTensor) -> Result<Self> {
        if latents.shape.len() != 4 || latents.shape[0] == 0 {
            return Err(Error::invalid(
                "dataset.latents",
                format!("shape {:?}", latents.shape),
                "expected [n, channels, height, width] with n ≥ 1",
            ));
        }
        let s = &encoder_hidden_states.shape;
        if s.len() != 3 || s[0] != latents.shape[0] {
            return Err(Error::invalid(
                "dataset.encoder_hidden_states",
                format!("shape {s:?}"),
                format!(
                    "expected [{}, tokens, width], one per latent",
                    latents.shape[0]
                ),
            ));
        }
        Ok(Self {
            latents,
            states: encoder_hidden_states,
        })
    }

    /// Reads a dataset file (`latents` and `encoder_hidden_states` tensors).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        Self::new(file.read("latents")?, file.read("encoder_hidden_states")?)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.latents.shape[0]
    }

    /// Whether there are no examples (never true for a constructed dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[channels, height, width]` of one latent.
    pub fn latent_shape(&self) -> [usize; 3] {
        [
            self.latents.shape[1],
            self.latents.shape[2],
            self.latents.shape[3],
        ]
    }

    /// `[tokens, width]` of one example's text states.
    pub fn state_shape(&self) -> [usize; 2] {
        [self.states.shape[1], self.states.shape[2]]
    }

    /// Example `i`'s latents, `[c · h · w]` flattened.
    pub fn latent(&self, i: usize) -> HostTensor {
        let [c, h, w] = self.latent_shape();
        let n = c * h * w;
        HostTensor::new(vec![n], self.latents.data[i * n..(i + 1) * n].to_vec())
    }

    /// Example `i`'s text states, `[tokens · width]` flattened.
    pub fn state(&self, i: usize) -> HostTensor {
        let [t, d] = self.state_shape();
        let n = t * d;
        HostTensor::new(vec![n], self.states.data[i * n..(i + 1) * n].to_vec())
    }

    /// Gathers examples `indices` into a batch on `device`.
    ///
    /// # Shapes
    ///
    /// - output: `([b, c, h, w], [b, tokens, width])`
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<3>) {
        let [c, h, w] = self.latent_shape();
        let [t, d] = self.state_shape();
        let gather = |src: &HostTensor, item: usize| -> Vec<f32> {
            indices
                .iter()
                .flat_map(|&i| src.data[i * item..(i + 1) * item].iter().copied())
                .collect()
        };
        let b = indices.len();
        let latents = Tensor::from_data(
            TensorData::new(gather(&self.latents, c * h * w), [b, c, h, w]),
            device,
        );
        let states = Tensor::from_data(
            TensorData::new(gather(&self.states, t * d), [b, t, d]),
            device,
        );
        (latents, states)
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    #[test]
    fn mismatched_counts_are_reported() {
        let latents = HostTensor::new(vec![2, 1, 1, 1], vec![1.0, 2.0]);
        let states = HostTensor::new(vec![3, 1, 1], vec![0.0; 3]);
        let err = LatentDataset::new(latents, states).unwrap_err().to_string();
        assert!(
            err.contains("[3, 1, 1]") && err.contains("expected [2, tokens, width]"),
            "{err}"
        );
    }

    #[test]
    fn batches_gather_the_right_rows() {
        let latents = HostTensor::new(vec![3, 1, 1, 2], vec![0., 1., 10., 11., 20., 21.]);
        let states = HostTensor::new(vec![3, 1, 1], vec![0., 1., 2.]);
        let ds = LatentDataset::new(latents, states).unwrap();
        let (l, s) = ds.batch(&[2, 0], &Device::flex());
        assert_eq!(
            l.into_data().try_to_vec::<f32>().unwrap(),
            vec![20., 21., 0., 1.]
        );
        assert_eq!(s.into_data().try_to_vec::<f32>().unwrap(), vec![2., 0.]);
    }
}
