//! `serde_json::Value` ↔ `google.protobuf.Struct` / `google.protobuf.Value`,
//! for the free-form parts of the contract (step params, step outputs).
//!
//! Protobuf numbers are doubles. Going to the wire, every JSON number becomes
//! one (integers beyond 2^53 lose precision, as in any JSON reader). Coming
//! back, an integral double within ±2^53 becomes a JSON integer, as JSON
//! writers print it; so integers round-trip exactly and `3.0` comes back as
//! `3`. Non-finite numbers have no JSON form and are refused.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as WireValue};
use serde_json::{Map, Number, Value};

use super::{Fields, invalid};
use loraflow_core::validation::Violations;

/// Largest integer a double holds exactly.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// A JSON value on the wire.
pub fn value_to_wire(value: Value) -> WireValue {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(value_to_wire).collect(),
        }),
        Value::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    WireValue { kind: Some(kind) }
}

fn map_to_struct(map: Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, value_to_wire(v)))
            .collect(),
    }
}

/// A JSON value as a wire `Struct` field: `null` is an absent field, an
/// object its struct. A `Struct` holds objects only, so any other value is
/// sent as `{"value": ...}`.
pub fn to_struct(value: Value) -> Option<Struct> {
    match value {
        Value::Null => None,
        Value::Object(map) => Some(map_to_struct(map)),
        other => Some(Struct {
            fields: [("value".to_owned(), value_to_wire(other))].into(),
        }),
    }
}

/// A wire `Struct` field as JSON: absent is `null`, present an object.
pub fn from_struct(value: Option<Struct>) -> Result<Value, Violations> {
    match value {
        None => Ok(Value::Null),
        Some(s) => struct_to_map(s).map(Value::Object),
    }
}

fn struct_to_map(s: Struct) -> Result<Map<String, Value>, Violations> {
    let mut fields = Fields::default();
    let map = s
        .fields
        .into_iter()
        .filter_map(|(k, v)| {
            let v = fields.take(&k, value_from_wire(v))?;
            Some((k, v))
        })
        .collect();
    fields.finish(map)
}

/// A wire value as JSON. A value with no kind set reads as `null`.
pub fn value_from_wire(value: WireValue) -> Result<Value, Violations> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => Value::Number(number(n)?),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            let mut fields = Fields::default();
            let items = fields.each("", list.values, value_from_wire);
            Value::Array(fields.finish(items)?)
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)?),
    })
}

fn number(n: f64) -> Result<Number, Violations> {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
        return Ok(Number::from(n as i64));
    }
    Number::from_f64(n).ok_or_else(|| invalid(format!("number {n} must be finite")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_round_trip() {
        let v = json!({
            "steps": 3,
            "negative": -7,
            "rate": 0.25,
            "on": true,
            "name": "corgi",
            "nothing": null,
            "list": [1, "two", [3.5], {"deep": false}],
            "nested": {"a": {"b": []}},
        });
        assert_eq!(from_struct(to_struct(v.clone())), Ok(v));
    }

    #[test]
    fn null_is_an_absent_struct() {
        assert_eq!(to_struct(Value::Null), None);
        assert_eq!(from_struct(None), Ok(Value::Null));
        assert_eq!(from_struct(Some(Struct::default())), Ok(json!({})));
    }

    #[test]
    fn non_objects_are_wrapped() {
        assert_eq!(
            from_struct(to_struct(json!([1, 2]))),
            Ok(json!({"value": [1, 2]}))
        );
    }

    #[test]
    fn integral_doubles_come_back_as_integers() {
        assert_eq!(
            from_struct(to_struct(json!({"x": 3.0}))),
            Ok(json!({"x": 3}))
        );
    }

    #[test]
    fn non_finite_numbers_name_their_path() {
        let nan = WireValue {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        let s = Struct {
            fields: [(
                "outer".to_owned(),
                WireValue {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![WireValue::default(), nan],
                    })),
                },
            )]
            .into(),
        };
        let err = from_struct(Some(s)).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "outer[1]");
        assert!(err.0[0].description.contains("finite"));
    }
}
