//! What an executor offers, and whether that satisfies a step's requirements.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::catalogue::{Engine, ModelFamily};
use crate::ids::BaseModelId;
use crate::workflow::{Requirements, StepKind};

/// A base model an executor has installed for one engine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct InstalledModel {
    pub engine: Engine,
    pub model: BaseModelId,
}

impl InstalledModel {
    pub fn new(engine: Engine, model: impl Into<BaseModelId>) -> Self {
        Self {
            engine,
            model: model.into(),
        }
    }
}

/// What an executor can run. Sent when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
    /// Base models installed per engine. An engine with none listed is
    /// offered any model (what an executor that cannot tell says).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub base_models: BTreeSet<InstalledModel>,
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
            base_models: BTreeSet::new(),
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

    /// Has this executor `model` installed for `engine`? True when it lists
    /// no model for that engine at all (it did not say what it has).
    pub fn has_model(&self, engine: Engine, model: &BaseModelId) -> bool {
        self.models_for(engine).next().is_none() || self.models_for(engine).any(|m| m == model)
    }

    /// The models installed for `engine`, in order.
    pub fn models_for(&self, engine: Engine) -> impl Iterator<Item = &BaseModelId> {
        self.base_models
            .iter()
            .filter(move |m| m.engine == engine)
            .map(|m| &m.model)
    }

    /// [`satisfies`](Self::satisfies), and for a step that loads the base
    /// model (`train`, `sample`) of a job on `model` = (engine, base model):
    /// the executor has that model installed for that engine.
    pub fn satisfies_job(
        &self,
        kind: &StepKind,
        requires: &Requirements,
        family: Option<ModelFamily>,
        model: Option<(Engine, &BaseModelId)>,
    ) -> bool {
        self.satisfies(kind, requires, family)
            && (!loads_base_model(kind)
                || model.is_none_or(|(engine, id)| self.has_model(engine, id)))
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

/// The most steps one poll may lease at once (`PollSteps.max_steps`).
pub const MAX_POLL_STEPS: u32 = 64;

/// Steps that load the job's base model, and so go only to an executor that
/// has it installed.
pub fn loads_base_model(kind: &StepKind) -> bool {
    kind.as_str() == StepKind::TRAIN || kind.as_str() == StepKind::SAMPLE
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
    fn train_and_sample_go_only_where_the_model_is_installed() {
        let mut c = caps();
        c.engines.insert(Engine::Kohya);
        c.base_models = [
            InstalledModel::new(Engine::Native, "tiny-sd"),
            InstalledModel::new(Engine::Native, "sd15"),
        ]
        .into();
        let (train, sample, label) = (
            StepKind::from("train"),
            StepKind::from("sample"),
            StepKind::from("label"),
        );
        let r = Requirements::default();
        let sd15 = BaseModelId::from("sd15");
        let sd21 = BaseModelId::from("sd21");
        assert!(c.satisfies_job(&train, &r, None, Some((Engine::Native, &sd15))));
        assert!(!c.satisfies_job(&train, &r, None, Some((Engine::Native, &sd21))));
        assert!(!c.satisfies_job(&sample, &r, None, Some((Engine::Native, &sd21))));
        // Steps that do not load the model go anywhere.
        let mut label_caps = c.clone();
        label_caps.kinds.insert(label.clone());
        assert!(label_caps.satisfies_job(&label, &r, None, Some((Engine::Native, &sd21))));
        // Kohya lists nothing: any model, as before.
        assert!(c.satisfies_job(&train, &r, None, Some((Engine::Kohya, &sd21))));
        assert_eq!(
            c.models_for(Engine::Native)
                .map(|m| m.as_str())
                .collect::<Vec<_>>(),
            ["sd15", "tiny-sd"]
        );
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
