//! Latent packing: the 16-channel VAE latent as a sequence of 2×2-patch tokens, and back
//! (diffusers' `FluxPipeline._pack_latents` and `_unpack_latents`).
//!
//! Token `(row, column)` of the packed grid holds the 2×2 patch at latent rows `2·row ..` and
//! columns `2·column ..`, its features ordered channel-major: `c·4 + dy·2 + dx`. Its position
//! ids are [`image_ids`](super::image_ids)`(h / 2, w / 2, 0)`.

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// Checks that a latent size can be packed (both sides even and non-zero).
pub fn check_packable(height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 || !height.is_multiple_of(2) || !width.is_multiple_of(2) {
        return Err(Error::invalid(
            "latents",
            format!("{height}×{width}"),
            "Flux packs the latent into 2×2 patches: height and width must be even and non-zero",
        ));
    }
    Ok(())
}

/// Packs latents into tokens of 2×2 patches.
///
/// # Shapes
///
/// - latents: `[batch, channels, height, width]`, height and width even
/// - output: `[batch, (height / 2) · (width / 2), channels · 4]`
pub fn pack_latents(latents: Tensor<4>) -> Result<Tensor<3>> {
    let [b, c, h, w] = latents.dims();
    check_packable(h, w)?;
    Ok(latents
        .reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4]))
}

/// Unpacks tokens of 2×2 patches into latents of `height × width`.
///
/// # Shapes
///
/// - tokens: `[batch, (height / 2) · (width / 2), channels · 4]`
/// - output: `[batch, channels, height, width]`
pub fn unpack_latents(tokens: Tensor<3>, height: usize, width: usize) -> Result<Tensor<4>> {
    check_packable(height, width)?;
    let [b, n, f] = tokens.dims();
    if n != (height / 2) * (width / 2) || !f.is_multiple_of(4) {
        return Err(Error::invalid(
            "tokens",
            format!("{n} tokens of {f} features"),
            format!(
                "a {height}×{width} latent packs into {} tokens of 4 features per channel",
                (height / 2) * (width / 2)
            ),
        ));
    }
    let c = f / 4;
    Ok(tokens
        .reshape([b, height / 2, width / 2, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, height, width]))
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::tensor_file::HostTensor;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn packing_orders_patches_row_major_and_features_channel_major() {
        let device = Device::flex();
        // Value = c·100 + y·10 + x: every element says where it came from.
        let (c, h, w) = (2, 4, 6);
        let mut data = Vec::new();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    data.push((ch * 100 + y * 10 + x) as f32);
                }
            }
        }
        let latents = Tensor::<4>::from_data(TensorData::new(data.clone(), [1, c, h, w]), &device);
        let packed = pack_latents(latents.clone()).unwrap();
        assert_eq!(packed.dims(), [1, 6, 8]);
        let p = HostTensor::from_tensor(packed.clone()).data;
        // Token (row 1, column 2) = index 1·3 + 2; feature c·4 + dy·2 + dx.
        let token = 5;
        for ch in 0..c {
            for dy in 0..2 {
                for dx in 0..2 {
                    let want = (ch * 100 + (2 + dy) * 10 + (4 + dx)) as f32;
                    assert_eq!(p[token * 8 + ch * 4 + dy * 2 + dx], want);
                }
            }
        }
        let back = HostTensor::from_tensor(unpack_latents(packed, h, w).unwrap());
        assert_eq!(back.data, data);
    }

    #[test]
    fn odd_sizes_and_mismatched_tokens_are_refused() {
        let device = Device::flex();
        let err = pack_latents(Tensor::<4>::zeros([1, 4, 5, 6], &device)).unwrap_err();
        assert!(err.to_string().contains("5×6"), "{err}");
        let err = unpack_latents(Tensor::<3>::zeros([1, 6, 16], &device), 4, 4).unwrap_err();
        assert!(err.to_string().contains("6 tokens"), "{err}");
    }
}
