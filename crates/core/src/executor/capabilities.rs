//! What an executor offers, and whether that satisfies a step's requirements.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::catalogue::{Engine, ModelFamily};
use crate::workflow::{Requirements, StepKind};

/// What an executor can run. Sent when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Step kinds it has executors for.
    pub kinds: BTreeSet<StepKind>,
    /// Training engines it can drive.
    #[serde(default)]
    pub engines: BTreeSet<Engine>,
    /// Model families it can load; empty means any.
    #[serde(default)]
    pub model_families: BTreeSet<ModelFamily>,
    #[serde(default)]
    pub gpu: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
    #[serde(default)]
    pub vram_gb: u32,
    /// Steps it runs at once. A GPU executor runs one training at a time by
    /// default, because two trainings on one card fight for its memory.
    pub max_concurrent_steps: u32,
    #[serde(default)]
    pub labels: BTreeSet<String>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            kinds: BTreeSet::new(),
            engines: BTreeSet::new(),
            model_families: BTreeSet::new(),
            gpu: false,
            gpu_name: None,
            vram_gb: 0,
            max_concurrent_steps: 1,
            labels: BTreeSet::new(),
        }
    }
}

impl Capabilities {
    /// Can this executor run a step of `kind` with `requires`, for a job on a
    /// model of `family`?
    pub fn satisfies(
        &self,
        kind: &StepKind,
        requires: &Requirements,
        family: Option<ModelFamily>,
    ) -> bool {
        self.kinds.contains(kind)
            && (!requires.gpu || self.gpu)
            && requires.min_vram_gb.is_none_or(|min| self.vram_gb >= min)
            && requires.engine.is_none_or(|e| self.engines.contains(&e))
            && (self.model_families.is_empty()
                || family.is_none_or(|f| self.model_families.contains(&f)))
            && requires.labels.is_subset(&self.labels)
    }

    /// Why the capabilities themselves are unusable, if they are.
    pub fn problem(&self) -> Option<String> {
        if self.kinds.is_empty() {
            return Some("an executor must offer at least one step kind".into());
        }
        if self.max_concurrent_steps == 0 {
            return Some("max_concurrent_steps 0 would never run anything; use 1 or more".into());
        }
        if self.vram_gb > 0 && !self.gpu {
            return Some(format!("vram_gb {} given without gpu = true", self.vram_gb));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            kinds: ["train", "sample"]
                .into_iter()
                .map(StepKind::from)
                .collect(),
            engines: [Engine::Native].into(),
            gpu: true,
            vram_gb: 24,
            labels: ["region=eu".to_owned()].into(),
            ..Capabilities::default()
        }
    }

    #[test]
    fn requirements_are_matched_one_by_one() {
        let c = caps();
        let train = StepKind::from("train");
        let mut r = Requirements {
            gpu: true,
            engine: Some(Engine::Native),
            min_vram_gb: Some(16),
            labels: ["region=eu".to_owned()].into(),
        };
        assert!(c.satisfies(&train, &r, Some(ModelFamily::Sd15)));
        assert!(!c.satisfies(&"label".into(), &r, None), "kind not offered");
        r.min_vram_gb = Some(40);
        assert!(!c.satisfies(&train, &r, None), "too little memory");
        r.min_vram_gb = None;
        r.engine = Some(Engine::Kohya);
        assert!(!c.satisfies(&train, &r, None), "engine missing");
        r.engine = None;
        r.labels.insert("region=us".into());
        assert!(!c.satisfies(&train, &r, None), "label missing");
        let cpu = Capabilities {
            gpu: false,
            vram_gb: 0,
            ..caps()
        };
        assert!(!cpu.satisfies(
            &train,
            &Requirements {
                gpu: true,
                ..Default::default()
            },
            None
        ));
        let sd15_only = Capabilities {
            model_families: [ModelFamily::Sd15].into(),
            ..caps()
        };
        assert!(!sd15_only.satisfies(&train, &Requirements::default(), Some(ModelFamily::Flux)));
    }

    #[test]
    fn unusable_capabilities_are_named() {
        assert!(
            Capabilities::default()
                .problem()
                .unwrap()
                .contains("at least one step kind")
        );
        assert!(
            Capabilities {
                max_concurrent_steps: 0,
                ..caps()
            }
            .problem()
            .is_some()
        );
        assert!(caps().problem().is_none());
    }
}
