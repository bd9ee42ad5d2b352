//! SDXL's micro-conditioning: the six `time_ids` of each image.
//!
//! `[original height, original width, crop top, crop left, target height, target width]`, in
//! pixels, as diffusers' `StableDiffusionXLPipeline._get_add_time_ids` orders them and as
//! sd-scripts' SDXL trainers compute them per image (`original_sizes_hw`, `crop_top_lefts`,
//! `target_sizes_hw` of `BaseDataset.__getitem__`):
//!
//! - original size: the image before any resizing;
//! - target size: its bucket;
//! - crop: Stability AI's convention that sd-scripts follows (`BucketManager.get_crop_ltrb`):
//!   the image is fitted *inside* the bucket keeping its aspect ratio, and the crop is the
//!   (floored) offset of that fitted image from the bucket's top-left; a horizontally flipped
//!   image takes its left from the right edge (`target width − crop right`).
//!
//! Sampling conditions on an uncropped image of the sample size.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The micro-conditioning of one image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizeConditioning {
    /// `(height, width)` before resizing.
    pub original_hw: (u32, u32),
    /// `(top, left)`.
    pub crop_top_left: (u32, u32),
    /// `(height, width)` of the bucket.
    pub target_hw: (u32, u32),
}

impl SizeConditioning {
    /// What sd-scripts records for an image of `image_wh` (width, height) trained in the bucket
    /// `bucket_wh`, flipped or not.
    pub fn for_bucket(image_wh: (u32, u32), bucket_wh: (u32, u32), flipped: bool) -> Self {
        let (bw, bh) = (f64::from(bucket_wh.0), f64::from(bucket_wh.1));
        let image_ar = f64::from(image_wh.0) / f64::from(image_wh.1.max(1));
        let (resized_w, resized_h) = if bw / bh > image_ar {
            (bh * image_ar, bh)
        } else {
            (bw, bw / image_ar)
        };
        // Python's float `//` floors.
        let left = ((bw - resized_w) / 2.0).floor();
        let top = ((bh - resized_h) / 2.0).floor();
        let right = left + resized_w;
        let left = if flipped { bw - right } else { left };
        Self {
            original_hw: (image_wh.1, image_wh.0),
            // `int()` truncates towards zero; the values are non-negative.
            crop_top_left: (top.max(0.0) as u32, left.max(0.0) as u32),
            target_hw: (bucket_wh.1, bucket_wh.0),
        }
    }

    /// An uncropped image of `(height, width)`: what pipelines condition samples on.
    pub fn uncropped(height: u32, width: u32) -> Self {
        Self {
            original_hw: (height, width),
            crop_top_left: (0, 0),
            target_hw: (height, width),
        }
    }

    /// The six `time_ids`.
    pub fn time_ids(&self) -> [f32; 6] {
        [
            self.original_hw.0 as f32,
            self.original_hw.1 as f32,
            self.crop_top_left.0 as f32,
            self.crop_top_left.1 as f32,
            self.target_hw.0 as f32,
            self.target_hw.1 as f32,
        ]
    }
}

/// The `time_ids` of a batch.
///
/// # Shapes
///
/// - output: `[items, 6]`
pub fn time_ids_tensor(items: &[SizeConditioning], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = items.iter().flat_map(|c| c.time_ids()).collect();
    Tensor::from_data(TensorData::new(flat, [items.len(), 6]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_aspect_ratio_has_no_crop() {
        let c = SizeConditioning::for_bucket((2048, 2048), (1024, 1024), false);
        assert_eq!(c.time_ids(), [2048.0, 2048.0, 0.0, 0.0, 1024.0, 1024.0]);
    }

    #[test]
    fn wider_image_is_fitted_inside_vertically() {
        // 1600×900 (16:9) in a 1024×1024 bucket: fitted 1024 × 576, top offset (1024−576)/2.
        let c = SizeConditioning::for_bucket((1600, 900), (1024, 1024), false);
        assert_eq!(c.original_hw, (900, 1600));
        assert_eq!(c.crop_top_left, (224, 0));
        assert_eq!(c.target_hw, (1024, 1024));
    }

    #[test]
    fn taller_image_and_flip_take_left_from_the_right_edge() {
        // 600×1000 in 832×1216: bucket 0.684 > image 0.6 → fitted 729.6 × 1216;
        // left = floor((832 − 729.6)/2) = 51, right = 780.6; flipped left = int(832 − 780.6) = 51.
        let c = SizeConditioning::for_bucket((600, 1000), (832, 1216), false);
        assert_eq!(c.crop_top_left, (0, 51));
        let f = SizeConditioning::for_bucket((600, 1000), (832, 1216), true);
        assert_eq!(f.crop_top_left, (0, 51));
        // An odd remainder: 601×1000 → fitted 730.816; left floor(50.592) = 50,
        // right 780.816, flipped left int(51.184) = 51.
        let f = SizeConditioning::for_bucket((601, 1000), (832, 1216), true);
        assert_eq!(f.crop_top_left, (0, 51));
        let n = SizeConditioning::for_bucket((601, 1000), (832, 1216), false);
        assert_eq!(n.crop_top_left, (0, 50));
    }

    #[test]
    fn uncropped_repeats_the_size() {
        assert_eq!(
            SizeConditioning::uncropped(768, 1344).time_ids(),
            [768.0, 1344.0, 0.0, 0.0, 768.0, 1344.0]
        );
    }
}
