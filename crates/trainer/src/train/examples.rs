//! The examples a run trains on, and the batches of each epoch.
//!
//! An example is a latent with its conditioning: pre-computed text states (a latents file) or a
//! caption encoded at each step (an image folder). Batches never mix latent sizes: each epoch,
//! the examples of every bucket (each repeated as often as its folder says) are shuffled and cut
//! into batches, and the batches of all buckets are shuffled together, as sd-scripts does.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

use super::dataset::LatentDataset;
use crate::rng::SeededRng;
use crate::sdxl::SizeConditioning;
use crate::tensor_file::HostTensor;

/// What an example is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub enum Conditioning {
    /// Text-encoder states `[tokens, width]`, fixed.
    States(HostTensor),
    /// A caption, tokenized and encoded when the batch is built.
    Caption(String),
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Scaled VAE latents `[channels, height, width]`.
    pub latents: HostTensor,
    /// Its conditioning.
    pub conditioning: Conditioning,
    /// Times seen per epoch.
    pub repeats: usize,
    /// SDXL's micro-conditioning of the image (`None` for SD1.x/SD2.x and latents files).
    pub size: Option<SizeConditioning>,
}

/// Every example of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainingSet {
    examples: Vec<Example>,
}

impl TrainingSet {
    /// Examples in a stable order.
    pub fn new(examples: Vec<Example>) -> Self {
        Self { examples }
    }

    /// A latents file's examples, each seen once per epoch.
    pub fn from_latents(dataset: &LatentDataset) -> Self {
        let [c, h, w] = dataset.latent_shape();
        let [t, d] = dataset.state_shape();
        let examples = (0..dataset.len())
            .map(|i| Example {
                latents: dataset.latent(i).reshaped(vec![c, h, w]),
                conditioning: Conditioning::States(dataset.state(i).reshaped(vec![t, d])),
                repeats: 1,
                size: None,
            })
            .collect();
        Self { examples }
    }

    /// The examples.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// Examples, not counting repeats.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Examples seen per epoch (sd-scripts' `ss_num_train_images`).
    pub fn len_with_repeats(&self) -> usize {
        self.examples.iter().map(|e| e.repeats).sum()
    }

    /// Example indices per latent shape, each repeated, in index order.
    fn by_bucket(&self) -> BTreeMap<Vec<usize>, Vec<usize>> {
        let mut buckets: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
        for (i, e) in self.examples.iter().enumerate() {
            let slot = buckets.entry(e.latents.shape.clone()).or_default();
            slot.extend(std::iter::repeat_n(i, e.repeats));
        }
        buckets
    }

    /// Micro-batches per epoch at `batch_size` (independent of the shuffle).
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.by_bucket()
            .values()
            .map(|v| v.len().div_ceil(batch_size))
            .sum()
    }

    /// The micro-batches of one epoch, drawn from `rng`.
    pub fn epoch_batches(&self, batch_size: usize, rng: &mut SeededRng) -> Vec<Vec<usize>> {
        let mut batches = Vec::new();
        for (_, mut indices) in self.by_bucket() {
            rng.shuffle(&mut indices);
            batches.extend(indices.chunks(batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// Latents of `indices` as a batch.
    ///
    /// # Shapes
    ///
    /// - output: `[b, channels, height, width]`
    pub fn latents(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let shape = &self.examples[indices[0]].latents.shape;
        let data: Vec<f32> = indices
            .iter()
            .flat_map(|&i| self.examples[i].latents.data.iter().copied())
            .collect();
        Tensor::from_data(
            TensorData::new(data, [indices.len(), shape[0], shape[1], shape[2]]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    fn example(h: usize, repeats: usize) -> Example {
        Example {
            latents: HostTensor::new(vec![1, h, 2], vec![0.0; h * 2]),
            conditioning: Conditioning::Caption(String::new()),
            repeats,
            size: None,
        }
    }

    #[test]
    fn batches_stay_within_buckets_and_count_repeats() {
        let set = TrainingSet::new(vec![example(2, 3), example(2, 1), example(4, 2)]);
        assert_eq!(set.len_with_repeats(), 6);
        assert_eq!(set.batches_per_epoch(2), 3);
        let mut rng = SeededRng::new(0, Stream::Shuffle);
        let batches = set.epoch_batches(2, &mut rng);
        assert_eq!(batches.len(), 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, vec![0, 0, 0, 1, 2, 2]);
        for b in &batches {
            let shapes: std::collections::BTreeSet<_> = b
                .iter()
                .map(|&i| set.examples()[i].latents.shape.clone())
                .collect();
            assert_eq!(shapes.len(), 1, "one bucket per batch");
        }
    }
}
