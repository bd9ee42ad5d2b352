//! Utilities shared by the integration tests.
#![allow(dead_code)]

pub mod sdxl;
pub mod sdxl_text_lora;
pub mod tiny;

use std::path::PathBuf;

use loraflow_trainer::tensor_file::HostTensor;

/// `crates/trainer/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Panics on the first NaN or infinity of `t`, naming `what`, the index and the value.
///
/// `f32::max` returns the other operand when one is NaN, so a fold with it would skip NaN and
/// let a broken output pass every tolerance check; every comparison goes through this first.
pub fn assert_finite(t: &HostTensor, what: &str) {
    if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        panic!(
            "{what} is not finite: element {i} of {} (shape {:?}) is {v}",
            t.data.len(),
            t.shape
        );
    }
}

/// Largest absolute difference between two host tensors of the same shape; panics when either
/// holds a NaN or an infinity.
pub fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    assert_finite(a, "the first tensor");
    assert_finite(b, "the second tensor");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute value; panics on a NaN or an infinity.
pub fn max_abs(a: &HostTensor) -> f32 {
    assert_finite(a, "the tensor");
    a.data.iter().map(|x| x.abs()).fold(0.0, f32::max)
}
