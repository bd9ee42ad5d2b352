//! The parameter schema: types, defaults and bounds, overridden per base model
//! and per engine, plus named profiles. Resolving a job's parameters reports
//! every bad field at once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::engine_rules::{EngineRules, Multiple};
use super::{BaseModel, Engine};
use crate::validation::Violations;

/// A parameter value as a user gives it and as a resolved job holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl ParamValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(v) => Some(*v as f64),
            Self::Float(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(v) => Some(v),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "string",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(v) => write!(f, "{v}"),
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
            Self::Str(v) => write!(f, "{v:?}"),
        }
    }
}

// A parameter value is a JSON boolean, number or string: `anyOf`, not the
// `oneOf` an untagged enum would derive, since an integer is a number too.
#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for ParamValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        let of = |t: Type| ObjectBuilder::new().schema_type(t);
        AnyOfBuilder::new()
            .item(of(Type::Boolean))
            .item(of(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))))
            .item(of(Type::Number).format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))))
            .item(of(Type::String))
            .description(Some("A parameter value: a boolean, an integer, a number or a string, as the parameter's type says."))
            .into()
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for ParamValue {}

/// Parameters as a user wrote them (unvalidated) or as resolved (validated,
/// defaults filled in).
pub type Params = BTreeMap<String, ParamValue>;

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    Int,
    Float,
    Bool,
    String,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::String => "string",
        })
    }
}

/// Changes to a parameter for one base model or engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ParamOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(default)]
    pub disabled: bool,
}

/// One parameter of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    pub default: ParamValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(default)]
    pub description: String,
    /// Overrides keyed by base model id or model family (the id wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ParamOverride>,
    /// Overrides keyed by engine name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engines: BTreeMap<String, ParamOverride>,
}

/// A parameter as it applies to one base model and engine: overrides folded in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct EffectiveParam {
    pub name: String,
    pub ty: ParamType,
    pub default: ParamValue,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub choices: Option<Vec<String>>,
    /// An int parameter's value must be a multiple of this (from the
    /// engine's rules: the native engine's resolution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiple_of: Option<u32>,
    pub description: String,
}

impl ParamSpec {
    /// This parameter for `model` and `engine`, or `None` if it is disabled there.
    pub fn effective(
        &self,
        name: &str,
        model: &BaseModel,
        engine: Engine,
    ) -> Option<EffectiveParam> {
        let family = model.family.to_string();
        let overrides = [
            self.models.get(&family),
            self.models.get(model.id.as_str()),
            self.engines.get(engine.as_str()),
        ];
        let mut p = EffectiveParam {
            name: name.to_owned(),
            ty: self.ty,
            default: self.default.clone(),
            min: self.min,
            max: self.max,
            choices: self.choices.clone(),
            multiple_of: None,
            description: self.description.clone(),
        };
        for o in overrides.into_iter().flatten() {
            if o.disabled {
                return None;
            }
            if let Some(d) = &o.default {
                p.default = d.clone();
            }
            p.min = o.min.or(p.min);
            p.max = o.max.or(p.max);
            if o.choices.is_some() {
                p.choices = o.choices.clone();
            }
        }
        Some(p)
    }
}

impl EffectiveParam {
    /// Check `value` against type and bounds; on success return it normalised
    /// (an int given for a float parameter becomes a float).
    pub fn check(&self, value: &ParamValue, context: &str) -> Result<ParamValue, String> {
        let name = &self.name;
        let value = match (self.ty, value) {
            (ParamType::Int, ParamValue::Int(_))
            | (ParamType::Float, ParamValue::Float(_))
            | (ParamType::Bool, ParamValue::Bool(_))
            | (ParamType::String, ParamValue::Str(_)) => value.clone(),
            (ParamType::Float, ParamValue::Int(v)) => ParamValue::Float(*v as f64),
            (ty, v) => {
                return Err(format!(
                    "{name} {v} is a {}, expected a {ty}",
                    v.type_name()
                ));
            }
        };
        if let Some(x) = value.as_f64() {
            if !x.is_finite() {
                return Err(format!("{name} {value} is not a finite number"));
            }
            if let Some(min) = self.min.filter(|min| x < *min) {
                return Err(format!(
                    "{name} {value} is below the minimum {min} {context}"
                ));
            }
            if let Some(max) = self.max.filter(|max| x > *max) {
                return Err(format!(
                    "{name} {value} is above the maximum {max} {context}"
                ));
            }
        }
        if let (Some(step), Some(v)) = (self.multiple_of, value.as_i64())
            && (step == 0 || v % i64::from(step) != 0)
        {
            let below = v.div_euclid(i64::from(step.max(1))) * i64::from(step);
            let nearest = [below, below + i64::from(step)]
                .into_iter()
                .filter(|n| {
                    self.min.is_none_or(|min| *n as f64 >= min)
                        && self.max.is_none_or(|max| *n as f64 <= max)
                })
                .map(|n| n.to_string())
                .collect::<Vec<_>>();
            let suggestion = if nearest.is_empty() {
                String::new()
            } else {
                format!("; use {}", nearest.join(" or "))
            };
            return Err(format!(
                "{name} {value} is not a multiple of {step} {context}, which the engine needs{suggestion}"
            ));
        }
        if let (Some(choices), Some(s)) = (&self.choices, value.as_str())
            && !choices.iter().any(|c| c == s)
        {
            return Err(format!(
                "{name} {value} is not one of {} {context}",
                choices.join(", ")
            ));
        }
        Ok(value)
    }
}

/// The whole schema: parameters and profiles, and what each engine runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ParamSchema {
    pub params: BTreeMap<String, ParamSpec>,
    #[cfg_attr(feature = "utoipa", schema(value_type = BTreeMap<String, BTreeMap<String, ParamValue>>))]
    pub profiles: BTreeMap<String, Params>,
    /// Declared by the engines, not read from TOML (see
    /// [`engine_rules`](super::engine_rules)).
    #[serde(skip)]
    pub engine_rules: BTreeMap<Engine, EngineRules>,
}

impl ParamSchema {
    /// All parameters as they apply to `model` and `engine` (disabled ones left out).
    pub fn effective_for(&self, model: &BaseModel, engine: Engine) -> Vec<EffectiveParam> {
        self.params
            .keys()
            .filter_map(|name| self.effective(name, model, engine))
            .collect()
    }

    /// One parameter as it applies to `model` and `engine`: the catalogue's
    /// overrides, then the engine's rules (its choices narrow the
    /// catalogue's, its steps add `multiple_of`). `None` if the parameter is
    /// unknown or disabled there.
    pub fn effective(
        &self,
        name: &str,
        model: &BaseModel,
        engine: Engine,
    ) -> Option<EffectiveParam> {
        let mut p = self.params.get(name)?.effective(name, model, engine)?;
        if let Some(rules) = self.engine_rules.get(&engine) {
            if let Some(runs) = rules.choices.get(name) {
                p.choices = Some(match p.choices.take() {
                    Some(offered) => offered.into_iter().filter(|c| runs.contains(c)).collect(),
                    None => runs.clone(),
                });
            }
            if let Some(step) = rules.multiples.get(name) {
                p.multiple_of = Some(match step {
                    Multiple::Of(n) => *n,
                    Multiple::ModelPixels => model.pixel_multiple(),
                });
            }
        }
        Some(p)
    }

    /// Resolve a job's parameters: defaults, then the profile, then the user's
    /// values. Every unknown, disabled, mistyped or out-of-range field is
    /// reported, each under `params.<name>`.
    pub fn resolve(
        &self,
        model: &BaseModel,
        engine: Engine,
        profile: Option<&str>,
        given: &Params,
    ) -> Result<Params, Violations> {
        let mut violations = Violations::default();
        let context = format!("for base model {} (engine {engine})", model.id);
        let effective: BTreeMap<&str, EffectiveParam> = self
            .params
            .keys()
            .filter_map(|name| Some((name.as_str(), self.effective(name, model, engine)?)))
            .collect();

        let mut resolved: Params = effective
            .iter()
            .map(|(name, p)| ((*name).to_owned(), p.default.clone()))
            .collect();

        if let Some(profile) = profile {
            match self.profiles.get(profile) {
                // A profile is a set of suggestions: values for parameters the
                // engine does not have are dropped, not errors.
                Some(values) => {
                    for (name, value) in values {
                        if let Some(p) = effective.get(name.as_str()) {
                            match p.check(value, &context) {
                                Ok(v) => {
                                    resolved.insert(name.clone(), v);
                                }
                                Err(msg) => {
                                    violations.push("profile", format!("profile {profile}: {msg}"))
                                }
                            }
                        }
                    }
                }
                None => violations.push(
                    "profile",
                    format!(
                        "unknown profile {profile:?}; known profiles: {}",
                        self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }

        for (name, value) in given {
            let field = format!("params.{name}");
            match effective.get(name.as_str()) {
                Some(p) => match p.check(value, &context) {
                    Ok(v) => {
                        resolved.insert(name.clone(), v);
                    }
                    Err(msg) => violations.push(field, msg),
                },
                None if self.params.contains_key(name) => violations.push(
                    field,
                    format!("{name} is not available {context}; remove it"),
                ),
                None => violations.push(
                    field,
                    format!(
                        "unknown parameter {name:?}; known parameters: {}",
                        effective.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }
        violations.into_result(resolved)
    }

    /// Check the schema itself: every default and profile value must pass its own bounds.
    pub fn check_consistency(&self, models: &[BaseModel]) -> Violations {
        let mut v = Violations::default();
        for model in models {
            for engine in &model.engines {
                for name in self.params.keys() {
                    let Some(p) = self.effective(name, model, *engine) else {
                        continue;
                    };
                    if let Err(msg) = p.check(&p.default, "") {
                        v.push(
                            format!("params.{name}"),
                            format!("default for {} ({engine}): {msg}", model.id),
                        );
                    }
                    // Bounds are values a user may give: the engine must run them.
                    for bound in [p.min, p.max].into_iter().flatten() {
                        if p.ty == ParamType::Int
                            && let Err(msg) = p.check(&ParamValue::Int(bound as i64), "")
                        {
                            v.push(
                                format!("params.{name}"),
                                format!("bound for {} ({engine}): {msg}", model.id),
                            );
                        }
                    }
                    if p.choices.as_ref().is_some_and(Vec::is_empty) {
                        v.push(
                            format!("params.{name}"),
                            format!(
                                "for {} ({engine}) none of the catalogue's choices is one the engine runs",
                                model.id
                            ),
                        );
                    }
                }
            }
        }
        for (profile, values) in &self.profiles {
            for name in values.keys() {
                if !self.params.contains_key(name) {
                    v.push(
                        format!("profiles.{profile}.{name}"),
                        format!("profile {profile} sets unknown parameter {name:?}"),
                    );
                }
            }
        }
        v
    }
}
