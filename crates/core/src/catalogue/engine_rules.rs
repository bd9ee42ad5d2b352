//! What an engine can run, as the engine itself declares it.
//!
//! The catalogue's TOML says which parameters exist and their bounds; it
//! cannot know what a training engine's code runs. Each engine's parameter
//! mapping (crate `loraflow-executors`: `native::params::rules()`,
//! `kohya::params::rules()`) reads its values from one table and hands the
//! same table here as [`EngineRules`]; the engine builder applies them with
//! [`Catalogue::with_engine_rules`](super::Catalogue::with_engine_rules).
//! `loraflow-core` cannot depend on the executors, so the data flows this way
//! at build time, and the schema keeps no second, hand-kept list: a value the
//! engine cannot run is refused at submit, naming the parameter, rather than
//! failing in training.

use std::collections::BTreeMap;

use super::Engine;

/// A rule that an int parameter's value is a multiple of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multiple {
    /// A fixed step.
    Of(u32),
    /// The base model's pixel multiple ([`BaseModel::pixel_multiple`](super::BaseModel::pixel_multiple)):
    /// what its VAE and UNet downsample an image by, together.
    ModelPixels,
}

/// The values one engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRules {
    pub engine: Engine,
    /// String parameters: the values the engine runs. The schema offers
    /// these, narrowed by the catalogue's own `choices` where it has them.
    pub choices: BTreeMap<String, Vec<String>>,
    /// Int parameters whose value must be a multiple of a step.
    pub multiples: BTreeMap<String, Multiple>,
}

impl EngineRules {
    /// No rules yet for `engine`.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            choices: BTreeMap::new(),
            multiples: BTreeMap::new(),
        }
    }

    /// The engine runs exactly `values` for the string parameter `name`.
    pub fn choices<'a>(mut self, name: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        self.choices.insert(
            name.to_owned(),
            values.into_iter().map(str::to_owned).collect(),
        );
        self
    }

    /// The int parameter `name` must be a multiple of `step`.
    pub fn multiple(mut self, name: &str, step: Multiple) -> Self {
        self.multiples.insert(name.to_owned(), step);
        self
    }
}
