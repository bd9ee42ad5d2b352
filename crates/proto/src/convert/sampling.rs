//! `SampleOverrides`: what a `SampleNow` request changes of a job's sample
//! settings. Both directions are plain copies; the catalogue's bounds are
//! checked by the engine ([`SampleOverrides::check`]), once for every
//! front-end.

use loraflow_core::sampling::SampleOverrides;

use crate::pb::v1 as pb;

impl From<SampleOverrides> for pb::SampleOverrides {
    fn from(o: SampleOverrides) -> Self {
        Self {
            prompts: o.prompts,
            negative_prompt: o.negative_prompt,
            sampler: o.sampler,
            steps: o.steps,
            guidance_scale: o.guidance_scale,
            width: o.width,
            height: o.height,
            seed: o.seed,
            lora_strength: o.lora_strength,
        }
    }
}

impl From<pb::SampleOverrides> for SampleOverrides {
    fn from(o: pb::SampleOverrides) -> Self {
        Self {
            prompts: o.prompts,
            negative_prompt: o.negative_prompt,
            sampler: o.sampler,
            steps: o.steps,
            guidance_scale: o.guidance_scale,
            width: o.width,
            height: o.height,
            seed: o.seed,
            lora_strength: o.lora_strength,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip() {
        let o = SampleOverrides {
            prompts: vec!["a red circle".into()],
            negative_prompt: Some(String::new()),
            sampler: Some("euler".into()),
            steps: Some(12),
            guidance_scale: Some(3.5),
            width: Some(64),
            height: Some(32),
            seed: Some(7),
            lora_strength: Some(0.8),
        };
        let wire = pb::SampleOverrides::from(o.clone());
        assert_eq!(SampleOverrides::from(wire), o);
        let empty = SampleOverrides::from(pb::SampleOverrides::default());
        assert!(empty.is_empty());
    }
}
