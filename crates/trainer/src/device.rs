//! Picking the burn device from a configuration string.
//!
//! burn 0.22 selects its backend at run time through a [`Device`], so the trainer takes the
//! device from its configuration (`cpu`, `wgpu`, `vulkan`, `cuda:N`) instead of from a generic
//! parameter. Which strings work depends on the crate features this build was compiled with.

/// The device a model lives on (re-exported for crates that hold one without depending on burn).
pub use burn::tensor::Device;

use crate::error::{Error, Result};

/// Parses a device string into a burn [`Device`] (without autodiff).
///
/// Accepted forms:
/// - `cpu` (or `flex`): burn's pure-Rust CPU backend (feature `cpu`, the default);
/// - `wgpu`, `wgpu:N`: the best wgpu adapter, or the N-th discrete GPU (feature `wgpu`);
/// - `vulkan`, `vulkan:N`: the same, pinned to Vulkan (feature `vulkan`);
/// - `cuda`, `cuda:N`: CUDA device N, 0 by default (feature `cuda`).
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec_trimmed = spec.trim();
    let (kind, index) = match spec_trimmed.split_once(':') {
        Some((kind, index)) => {
            let index: usize = index.parse().map_err(|_| Error::Device {
                device: spec.to_string(),
                reason: format!("`{index}` is not a device index (expected e.g. `cuda:0`)"),
            })?;
            (kind, Some(index))
        }
        None => (spec_trimmed, None),
    };
    match kind {
        "cpu" | "flex" => {
            if index.is_some() {
                return Err(Error::Device {
                    device: spec.to_string(),
                    reason: "the CPU device takes no index".into(),
                });
            }
            cpu(spec)
        }
        "wgpu" => wgpu(spec, index),
        "vulkan" => vulkan(spec, index),
        "cuda" => cuda(spec, index),
        other => Err(Error::Device {
            device: spec.to_string(),
            reason: format!("unknown backend `{other}`; expected cpu, wgpu, vulkan or cuda:N"),
        }),
    }
}

fn missing_feature(spec: &str, feature: &str) -> Error {
    Error::Device {
        device: spec.to_string(),
        reason: format!(
            "this build of loraflow-trainer has no `{feature}` feature; rebuild with `--features {feature}`"
        ),
    }
}

#[cfg(feature = "cpu")]
fn cpu(_spec: &str) -> Result<Device> {
    Ok(Device::flex())
}

#[cfg(not(feature = "cpu"))]
fn cpu(spec: &str) -> Result<Device> {
    Err(missing_feature(spec, "cpu"))
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn gpu_kind(index: Option<usize>) -> burn::tensor::DeviceKind {
    match index {
        Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
        None => burn::tensor::DeviceKind::DefaultDevice,
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(_spec: &str, index: Option<usize>) -> Result<Device> {
    Ok(Device::wgpu(gpu_kind(index)))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(spec: &str, _index: Option<usize>) -> Result<Device> {
    Err(missing_feature(spec, "wgpu"))
}

#[cfg(feature = "vulkan")]
fn vulkan(_spec: &str, index: Option<usize>) -> Result<Device> {
    Ok(Device::vulkan(gpu_kind(index)))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(spec: &str, _index: Option<usize>) -> Result<Device> {
    Err(missing_feature(spec, "vulkan"))
}

#[cfg(feature = "cuda")]
fn cuda(_spec: &str, index: Option<usize>) -> Result<Device> {
    Ok(Device::cuda(index.unwrap_or(0)))
}

#[cfg(not(feature = "cuda"))]
fn cuda(spec: &str, _index: Option<usize>) -> Result<Device> {
    Err(missing_feature(spec, "cuda"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_parses() {
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device(" flex ").is_ok());
    }

    #[test]
    fn bad_strings_name_the_problem() {
        let err = parse_device("tpu:0").unwrap_err().to_string();
        assert!(err.contains("unknown backend `tpu`"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("`x` is not a device index"), "{err}");
        let err = parse_device("cpu:1").unwrap_err().to_string();
        assert!(err.contains("takes no index"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_feature_is_reported() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("no `cuda` feature"), "{err}");
    }
}
