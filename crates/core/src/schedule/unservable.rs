//! Whether any connected executor could ever run a queued step, and if not,
//! what is missing: the `waiting_for` that `GetJob`, `status` and `watch`
//! show, and the reason a step's schedule-to-start timeout fails its job
//! with.
//!
//! A step whose executors exist but are all busy is ordinary queueing and
//! is not unservable: only capabilities count here, never load. The runtime
//! decides which executors are connected and passes their capabilities in.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalogue::{Engine, ModelFamily};
use crate::executor::{Capabilities, loads_base_model};
use crate::ids::BaseModelId;
use crate::workflow::{Requirements, StepKind};

/// One thing a step needs from its executor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "need", content = "value")]
pub enum Need {
    /// Runs steps of this kind.
    Kind(StepKind),
    /// Drives this training engine.
    Engine(Engine),
    /// Has a GPU.
    Gpu,
    /// Has at least this much GPU memory.
    MinVramGb(u32),
    /// Carries this capability label.
    Label(String),
    /// Loads models of this family.
    Family(ModelFamily),
    /// Has this base model installed for this engine (steps that load it).
    Model(Engine, BaseModelId),
}

impl Need {
    /// Does `caps` meet this one need?
    pub fn met_by(&self, caps: &Capabilities) -> bool {
        match self {
            Need::Kind(k) => caps.kinds.contains(k),
            Need::Engine(e) => caps.engines.contains(e),
            Need::Gpu => caps.gpu,
            Need::MinVramGb(min) => caps.vram_gb >= *min,
            Need::Label(l) => caps.labels.contains(l),
            Need::Family(f) => caps.model_families.is_empty() || caps.model_families.contains(f),
            Need::Model(engine, model) => caps.has_model(*engine, model),
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Kind(k) => write!(f, "kind={k}"),
            Need::Engine(e) => write!(f, "engine={e}"),
            Need::Gpu => f.write_str("gpu"),
            Need::MinVramGb(gb) => write!(f, "min_vram_gb={gb}"),
            Need::Label(l) => write!(f, "label {l}"),
            Need::Family(m) => write!(f, "model family {m}"),
            Need::Model(engine, model) => {
                write!(f, "base model {model} installed for engine={engine}")
            }
        }
    }
}

/// Every need of a step of `kind` with `requires`, for a job on a model of
/// `family`. An executor meets them all exactly when
/// [`Capabilities::satisfies`] holds.
pub fn needs(kind: &StepKind, requires: &Requirements, family: Option<ModelFamily>) -> Vec<Need> {
    let mut out = vec![Need::Kind(kind.clone())];
    out.extend(requires.engine.map(Need::Engine));
    if requires.gpu {
        out.push(Need::Gpu);
    }
    out.extend(requires.min_vram_gb.map(Need::MinVramGb));
    out.extend(requires.labels.iter().cloned().map(Need::Label));
    out.extend(family.map(Need::Family));
    out
}

/// A queued step no connected executor can run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unservable {
    /// The needs no connected executor meets; when each need is met by
    /// some executor but none meets them together, all of the step's needs.
    pub missing: Vec<Need>,
    /// True when every need is met by some executor, only never by one
    /// executor alone.
    pub only_together: bool,
}

impl fmt::Display for Unservable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("waiting for an executor with ")?;
        let n = self.missing.len();
        for (i, need) in self.missing.iter().enumerate() {
            match i {
                0 => {}
                i if i + 1 == n => f.write_str(" and ")?,
                _ => f.write_str(", ")?,
            }
            write!(f, "{need}")?;
        }
        if self.only_together {
            f.write_str("; none connected has all of them")
        } else {
            f.write_str("; none connected")
        }
    }
}

/// What keeps a step of `kind` with `requires` (job on `family`) from ever
/// being leased by the `connected` executors; `None` when one of them could
/// run it (busy or not).
pub fn unservable<'a>(
    kind: &StepKind,
    requires: &Requirements,
    family: Option<ModelFamily>,
    connected: impl IntoIterator<Item = &'a Capabilities>,
) -> Option<Unservable> {
    unservable_job(kind, requires, family, None, connected)
}

/// [`unservable`] for a job on `model` = (engine, base model): a step that
/// loads the base model also needs an executor that has it installed.
pub fn unservable_job<'a>(
    kind: &StepKind,
    requires: &Requirements,
    family: Option<ModelFamily>,
    model: Option<(Engine, &BaseModelId)>,
    connected: impl IntoIterator<Item = &'a Capabilities>,
) -> Option<Unservable> {
    let connected: Vec<&Capabilities> = connected.into_iter().collect();
    if connected
        .iter()
        .any(|c| c.satisfies_job(kind, requires, family, model))
    {
        return None;
    }
    let mut all = needs(kind, requires, family);
    if loads_base_model(kind) {
        all.extend(model.map(|(engine, id)| Need::Model(engine, id.clone())));
    }
    let missing: Vec<Need> = all
        .iter()
        .filter(|n| !connected.iter().any(|c| n.met_by(c)))
        .cloned()
        .collect();
    Some(if missing.is_empty() {
        Unservable {
            missing: all,
            only_together: true,
        }
    } else {
        Unservable {
            missing,
            only_together: false,
        }
    })
}

impl super::QueuedStep {
    /// What keeps this step from ever being leased by the `connected`
    /// executors; `None` when one of them could run it.
    pub fn unservable<'a>(
        &self,
        connected: impl IntoIterator<Item = &'a Capabilities>,
    ) -> Option<Unservable> {
        unservable_job(
            &self.kind,
            &self.requires,
            self.family,
            self.model.as_ref().map(|(e, m)| (*e, m)),
            connected,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_on_gpu(engine: Engine) -> Requirements {
        Requirements {
            gpu: true,
            engine: Some(engine),
            min_vram_gb: Some(16),
            labels: Default::default(),
        }
    }

    fn caps(kinds: &[&str], engines: &[Engine], vram_gb: u32) -> Capabilities {
        Capabilities {
            kinds: kinds.iter().map(|k| StepKind::from(*k)).collect(),
            engines: engines.iter().copied().collect(),
            gpu: vram_gb > 0,
            vram_gb,
            ..Capabilities::default()
        }
    }

    fn train() -> StepKind {
        StepKind::from(StepKind::TRAIN)
    }

    #[test]
    fn with_no_executor_connected_every_need_is_named() {
        let u = unservable(&train(), &train_on_gpu(Engine::AiToolkit), None, []).unwrap();
        assert_eq!(
            u.to_string(),
            "waiting for an executor with kind=train, engine=ai-toolkit, gpu and min_vram_gb=16; none connected"
        );
    }

    #[test]
    fn only_the_needs_no_connected_executor_meets_are_named() {
        let cpu_native = caps(&["train", "sample"], &[Engine::Native], 0);
        let u = unservable(
            &train(),
            &train_on_gpu(Engine::AiToolkit),
            Some(ModelFamily::Flux),
            [&cpu_native],
        )
        .unwrap();
        assert_eq!(
            u.missing,
            [
                Need::Engine(Engine::AiToolkit),
                Need::Gpu,
                Need::MinVramGb(16)
            ]
        );
        assert_eq!(
            u.to_string(),
            "waiting for an executor with engine=ai-toolkit, gpu and min_vram_gb=16; none connected"
        );
        // A GPU too small names only the memory.
        let small = caps(&["train"], &[Engine::AiToolkit], 8);
        let u = unservable(&train(), &train_on_gpu(Engine::AiToolkit), None, [&small]).unwrap();
        assert_eq!(
            u.to_string(),
            "waiting for an executor with min_vram_gb=16; none connected"
        );
    }

    #[test]
    fn needs_met_only_by_different_executors_are_named_together() {
        let gpu_native = caps(&["train"], &[Engine::Native], 24);
        let cpu_kohya = caps(&["train"], &[Engine::Kohya], 0);
        let u = unservable(
            &train(),
            &train_on_gpu(Engine::Kohya),
            None,
            [&gpu_native, &cpu_kohya],
        )
        .unwrap();
        assert!(u.only_together);
        assert_eq!(
            u.to_string(),
            "waiting for an executor with kind=train, engine=kohya, gpu and min_vram_gb=16; none connected has all of them"
        );
    }

    #[test]
    fn a_step_some_connected_executor_could_run_is_not_unservable_even_when_it_is_busy() {
        let gpu_kohya = Capabilities {
            max_concurrent_steps: 1,
            ..caps(&["train"], &[Engine::Kohya], 24)
        };
        assert_eq!(
            unservable(&train(), &train_on_gpu(Engine::Kohya), None, [&gpu_kohya]),
            None
        );
    }

    #[test]
    fn labels_and_model_families_are_needs_too() {
        let mut requires = Requirements::default();
        requires.labels.insert("region=eu".into());
        let sd15_only = Capabilities {
            model_families: [ModelFamily::Sd15].into(),
            ..caps(&["label"], &[], 0)
        };
        let u = unservable(
            &StepKind::from(StepKind::LABEL),
            &requires,
            Some(ModelFamily::Sdxl),
            [&sd15_only],
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "waiting for an executor with label region=eu and model family sdxl; none connected"
        );
        // An executor that loads any family meets the family need.
        let any = Capabilities {
            labels: ["region=eu".to_owned()].into(),
            ..caps(&["label"], &[], 0)
        };
        assert_eq!(
            unservable(
                &StepKind::from(StepKind::LABEL),
                &requires,
                Some(ModelFamily::Sdxl),
                [&any]
            ),
            None
        );
    }

    #[test]
    fn a_step_that_loads_the_base_model_waits_for_a_worker_that_has_it() {
        use crate::executor::InstalledModel;
        let requires = train_on_gpu(Engine::Native);
        let sd15 = BaseModelId::from("sd15");
        let tiny_only = Capabilities {
            base_models: [InstalledModel::new(Engine::Native, "tiny-sd")].into(),
            ..caps(&["train", "sample"], &[Engine::Native], 24)
        };
        let u = unservable_job(
            &train(),
            &requires,
            None,
            Some((Engine::Native, &sd15)),
            [&tiny_only],
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "waiting for an executor with base model sd15 installed for engine=native; none connected"
        );
        // The model it has is served.
        assert_eq!(
            unservable_job(
                &train(),
                &requires,
                None,
                Some((Engine::Native, &BaseModelId::from("tiny-sd"))),
                [&tiny_only],
            ),
            None
        );
        // An executor that lists no models for the engine takes any.
        let any = caps(&["train"], &[Engine::Native], 24);
        assert_eq!(
            unservable_job(
                &train(),
                &requires,
                None,
                Some((Engine::Native, &sd15)),
                [&any]
            ),
            None
        );
    }

    #[test]
    fn the_needs_agree_with_satisfies() {
        // Whenever every single need is met by one executor, it satisfies the step.
        let requires = train_on_gpu(Engine::Kohya);
        for c in [
            caps(&["train"], &[Engine::Kohya], 24),
            caps(&["train"], &[Engine::Kohya], 8),
            caps(&["train"], &[Engine::Native], 24),
            caps(&["sample"], &[Engine::Kohya], 24),
            caps(&["train"], &[Engine::Kohya], 0),
        ] {
            let all_met = needs(&train(), &requires, Some(ModelFamily::Sdxl))
                .iter()
                .all(|n| n.met_by(&c));
            assert_eq!(
                all_met,
                c.satisfies(&train(), &requires, Some(ModelFamily::Sdxl)),
                "{c:?}"
            );
        }
    }
}
