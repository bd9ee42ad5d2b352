//! The catalogue: which base models can be trained, by which engines, with which
//! parameters. Loaded from TOML; [`Catalogue::builtin`] is the default.

pub mod custom;
pub mod engine_rules;
mod params;
mod service_status;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use custom::{CustomModel, TenantModels};
pub use engine_rules::{EngineRules, Multiple};
pub use params::{
    EffectiveParam, ParamOverride, ParamSchema, ParamSpec, ParamType, ParamValue, Params,
};
pub use service_status::{ServiceStatus, StatusHandle};

use crate::ids::BaseModelId;
use crate::validation::Violations;

/// A training engine: the native burn trainer, or an external one driven as a subprocess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum Engine {
    #[serde(rename = "native")]
    Native,
    #[serde(rename = "kohya")]
    Kohya,
    #[serde(rename = "ai-toolkit")]
    AiToolkit,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Native, Engine::Kohya, Engine::AiToolkit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Kohya => "kohya",
            Self::AiToolkit => "ai-toolkit",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine name that is not one of [`Engine::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine {0:?}; expected one of native, kohya, ai-toolkit")]
pub struct UnknownEngine(pub String);

impl FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEngine(s.to_owned()))
    }
}

/// The architecture family of a base model; LoRA key layouts and defaults follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    Sd15,
    Sd2,
    Sdxl,
    Flux,
}

impl ModelFamily {
    /// What the family's VAE and UNet downsample an image by, together:
    /// training and sampling sizes are multiples of it. SD1.x and SD2.x: a
    /// VAE of 8 and a UNet of four levels (8); SDXL: three levels (4); Flux:
    /// 2×2 patches of 8× latents. A model of a smaller shape sets its own
    /// ([`BaseModel::pixel_multiple`]).
    pub fn pixel_multiple(self) -> u32 {
        match self {
            Self::Sd15 | Self::Sd2 => 64,
            Self::Sdxl => 32,
            Self::Flux => 16,
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sd15 => "sd15",
            Self::Sd2 => "sd2",
            Self::Sdxl => "sdxl",
            Self::Flux => "flux",
        })
    }
}

impl FromStr for ModelFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Sd15, Self::Sd2, Self::Sdxl, Self::Flux]
            .into_iter()
            .find(|f| f.to_string() == s)
            .ok_or_else(|| {
                format!("unknown model family {s:?}; expected one of sd15, sd2, sdxl, flux")
            })
    }
}

/// A base model a LoRA can be trained against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    pub id: BaseModelId,
    pub label: String,
    pub family: ModelFamily,
    pub engines: Vec<Engine>,
    /// GPU memory a training step on this model needs; 0 means it trains on CPU.
    #[serde(default)]
    pub min_vram_gb: u32,
    /// Closed by the operator; jobs against it are refused.
    #[serde(default)]
    pub disabled: bool,
    /// What this model's VAE and UNet downsample an image by, together, when
    /// it differs from its family's ([`ModelFamily::pixel_multiple`]); the
    /// native engine trains at multiples of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_multiple: Option<u32>,
}

impl BaseModel {
    pub fn supports(&self, engine: Engine) -> bool {
        self.engines.contains(&engine)
    }

    /// Training and sampling sizes of this model are multiples of this.
    pub fn pixel_multiple(&self) -> u32 {
        self.pixel_multiple
            .unwrap_or_else(|| self.family.pixel_multiple())
    }
}

/// Problems loading a catalogue.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogueError {
    /// The TOML does not parse or does not have the catalogue's shape.
    #[error("catalogue is not valid TOML of the expected shape: {0}")]
    Parse(String),
    /// It parses, but contradicts itself (a default outside its own bounds, ...).
    #[error("catalogue is inconsistent: {0}")]
    Invalid(Violations),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    base_models: Vec<BaseModel>,
    #[serde(default)]
    params: std::collections::BTreeMap<String, ParamSpec>,
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, Params>,
    #[serde(default)]
    service: Option<ServiceStatus>,
}

/// Base models, the parameter schema, and the initial service status.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    /// The (model, engine) pairs offered: with engine rules applied
    /// ([`with_engine_rules`](Self::with_engine_rules)), only engines this
    /// build has.
    pub base_models: Vec<BaseModel>,
    pub schema: ParamSchema,
    /// The service status the engine starts with.
    pub service: ServiceStatus,
    /// Engines the catalogue lists for a model that this build has no
    /// executor for, by model: not offered, kept to explain a refusal.
    pub withheld: BTreeMap<BaseModelId, Vec<Engine>>,
}

const BUILTIN: &str = include_str!("default.toml");

impl Catalogue {
    /// The catalogue loraflow ships with.
    pub fn builtin() -> Self {
        Self::from_toml_str(BUILTIN).expect("the built-in catalogue is valid")
    }

    /// Parse and check a catalogue.
    pub fn from_toml_str(text: &str) -> Result<Self, CatalogueError> {
        let file: CatalogueFile =
            toml::from_str(text).map_err(|e| CatalogueError::Parse(e.to_string()))?;
        let catalogue = Self {
            base_models: file.base_models,
            schema: ParamSchema {
                params: file.params,
                profiles: file.profiles,
                engine_rules: Default::default(),
            },
            service: file.service.unwrap_or_default(),
            withheld: BTreeMap::new(),
        };
        let mut v = catalogue.schema.check_consistency(&catalogue.base_models);
        let mut seen = std::collections::BTreeSet::new();
        for m in &catalogue.base_models {
            if !seen.insert(&m.id) {
                v.push(format!("base_models.{}", m.id), "duplicate base model id");
            }
            if m.engines.is_empty() {
                v.push(
                    format!("base_models.{}", m.id),
                    "no engine can train it; list at least one",
                );
            }
        }
        v.into_result(catalogue).map_err(CatalogueError::Invalid)
    }

    /// The catalogue with what each engine runs applied to its schema
    /// (see [`engine_rules`]), offering only the engines that declared
    /// rules: those are the engines this build has executors for, so a
    /// (model, engine) pair no executor implements is never offered (see
    /// [`only_engines`](Self::only_engines)). Refused if the catalogue then
    /// contradicts itself (a default or bound the engine cannot run, no
    /// choice left).
    pub fn with_engine_rules(
        mut self,
        rules: impl IntoIterator<Item = EngineRules>,
    ) -> Result<Self, CatalogueError> {
        for r in rules {
            self.schema.engine_rules.insert(r.engine, r);
        }
        let has: BTreeSet<Engine> = self.schema.engine_rules.keys().copied().collect();
        self = self.only_engines(&has);
        self.schema
            .check_consistency(&self.base_models)
            .into_result(self)
            .map_err(CatalogueError::Invalid)
    }

    /// The catalogue offering only `engines`: other engines are taken off
    /// each model and recorded in [`withheld`](Self::withheld); a model left
    /// with no engine is not offered at all.
    pub fn only_engines(mut self, engines: &BTreeSet<Engine>) -> Self {
        for m in &mut self.base_models {
            let (kept, dropped): (Vec<Engine>, Vec<Engine>) =
                m.engines.iter().partition(|e| engines.contains(e));
            if !dropped.is_empty() {
                self.withheld
                    .entry(m.id.clone())
                    .or_default()
                    .extend(dropped);
            }
            m.engines = kept;
        }
        self.base_models.retain(|m| !m.engines.is_empty());
        self
    }

    /// The offered pairs, for messages: `sd15 (native, kohya), sdxl (kohya)`.
    pub fn offered(&self) -> String {
        let pairs: Vec<String> = self
            .base_models
            .iter()
            .filter(|m| !m.disabled)
            .map(|m| {
                let engines: Vec<&str> = m.engines.iter().map(|e| e.as_str()).collect();
                format!("{} ({})", m.id, engines.join(", "))
            })
            .collect();
        if pairs.is_empty() {
            "nothing".to_owned()
        } else {
            pairs.join(", ")
        }
    }

    pub fn base_model(&self, id: &BaseModelId) -> Option<&BaseModel> {
        self.base_models.iter().find(|m| &m.id == id)
    }

    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.schema.profiles.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
