//! Utilities shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use loraflow_trainer::tensor_file::HostTensor;

/// `crates/trainer/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Largest absolute difference between two host tensors of the same shape.
pub fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute value.
pub fn max_abs(a: &HostTensor) -> f32 {
    a.data.iter().map(|x| x.abs()).fold(0.0, f32::max)
}
