//! Training parameter values and maps.

use std::collections::BTreeMap;

use loraflow_core::catalogue::{ParamValue, Params};
use loraflow_core::validation::Violations;

use super::{Fields, invalid};
use crate::pb::v1 as pb;
use pb::param_value::Kind;

impl From<ParamValue> for pb::ParamValue {
    fn from(value: ParamValue) -> Self {
        let kind = match value {
            ParamValue::Bool(v) => Kind::BoolValue(v),
            ParamValue::Int(v) => Kind::IntValue(v),
            ParamValue::Float(v) => Kind::DoubleValue(v),
            ParamValue::Str(v) => Kind::StringValue(v),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<pb::ParamValue> for ParamValue {
    type Error = Violations;

    fn try_from(value: pb::ParamValue) -> Result<Self, Self::Error> {
        match value.kind {
            Some(Kind::BoolValue(v)) => Ok(Self::Bool(v)),
            Some(Kind::IntValue(v)) => Ok(Self::Int(v)),
            // Bounds checks compare numbers; a NaN would pass every one of them.
            Some(Kind::DoubleValue(v)) if !v.is_finite() => {
                Err(invalid(format!("{v} is not a finite number")))
            }
            Some(Kind::DoubleValue(v)) => Ok(Self::Float(v)),
            Some(Kind::StringValue(v)) => Ok(Self::Str(v)),
            None => Err(invalid(
                "no value; set one of bool_value, int_value, double_value, string_value",
            )),
        }
    }
}

/// Parameters on the wire.
pub fn params_to_wire(params: Params) -> BTreeMap<String, pb::ParamValue> {
    params.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// Parameters from the wire; a bad value is reported under its name.
pub fn params_from_wire(params: BTreeMap<String, pb::ParamValue>) -> Result<Params, Violations> {
    let mut fields = Fields::default();
    let out = params
        .into_iter()
        .filter_map(|(k, v)| Some((k.clone(), fields.take(&k, ParamValue::try_from(v))?)))
        .collect();
    fields.finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Params {
        [
            ("flip".to_owned(), ParamValue::Bool(true)),
            ("epochs".to_owned(), ParamValue::Int(12)),
            ("learning_rate".to_owned(), ParamValue::Float(1e-4)),
            ("optimizer".to_owned(), ParamValue::Str("adamw".into())),
        ]
        .into()
    }

    #[test]
    fn params_round_trip() {
        assert_eq!(params_from_wire(params_to_wire(sample())), Ok(sample()));
    }

    #[test]
    fn every_kind_round_trips_alone() {
        for v in sample().into_values() {
            assert_eq!(ParamValue::try_from(pb::ParamValue::from(v.clone())), Ok(v));
        }
    }

    #[test]
    fn empty_and_non_finite_values_are_reported_by_name() {
        let mut wire = params_to_wire(sample());
        wire.insert("epochs".into(), pb::ParamValue { kind: None });
        wire.insert(
            "learning_rate".into(),
            pb::ParamValue {
                kind: Some(Kind::DoubleValue(f64::INFINITY)),
            },
        );
        let err = params_from_wire(wire).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["epochs", "learning_rate"]);
    }
}
