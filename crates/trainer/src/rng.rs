//! Seeded random numbers, generated on the host.
//!
//! burn's device seeds are per backend and sometimes global, and its generators differ between
//! backends. Drawing every random number (LoRA initialisation, noise, timesteps, shuffling) on
//! the host from ChaCha8 streams makes a run reproducible from its seed alone, on any device.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Independent random streams derived from one seed, so that (for example) adding a LoRA
/// target does not change the noise drawn for the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// LoRA factor initialisation.
    LoraInit = 1,
    /// Dataset order.
    Shuffle = 2,
    /// Diffusion noise, offset noise and timesteps.
    Noise = 3,
    /// Random base weights (benchmarks and tests without a checkpoint).
    BaseInit = 4,
    /// Initial latents of sample images.
    Sample = 5,
    /// Caption shuffling and dropout.
    Caption = 6,
    /// Which images are held out for validation, and the noise they are validated with.
    Validation = 7,
    /// Scenes of the procedural shapes world.
    World = 8,
}

/// A reproducible random source.
#[derive(Debug, Clone)]
pub struct SeededRng(ChaCha8Rng);

impl SeededRng {
    /// The stream `stream` of seed `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream as u64);
        Self(rng)
    }

    /// The stream's position (to save a run's state).
    pub fn word_pos(&self) -> u128 {
        self.0.get_word_pos()
    }

    /// Moves the stream to a position saved with [`word_pos`](Self::word_pos).
    pub fn set_word_pos(&mut self, pos: u128) {
        self.0.set_word_pos(pos);
    }

    /// `n` samples of U(low, high).
    pub fn uniform(&mut self, n: usize, low: f32, high: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(low..high)).collect()
    }

    /// `n` samples of N(0, 1) (Box–Muller, in f64 then rounded).
    pub fn normal(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // 1 - U keeps the logarithm finite.
            let u1: f64 = 1.0 - self.0.random::<f64>();
            let u2: f64 = self.0.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A uniform integer in `[low, high)`.
    pub fn below(&mut self, low: usize, high: usize) -> usize {
        self.0.random_range(low..high)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.0.random_range(0..=i);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a = SeededRng::new(7, Stream::Noise).normal(5);
        let b = SeededRng::new(7, Stream::Noise).normal(5);
        let c = SeededRng::new(7, Stream::LoraInit).normal(5);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn positions_restore_the_stream() {
        let mut a = SeededRng::new(9, Stream::Noise);
        a.normal(7);
        let pos = a.word_pos();
        let next = a.normal(3);
        let mut b = SeededRng::new(9, Stream::Noise);
        b.set_word_pos(pos);
        assert_eq!(b.normal(3), next);
    }

    #[test]
    fn normal_has_unit_moments() {
        let x = SeededRng::new(1, Stream::Noise).normal(20_000);
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
