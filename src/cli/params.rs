//! `loraflow params <model>`: the parameters a job on that base model
//! accepts with an engine (`GetParameterSchema`): type, default, bounds or
//! choices, and the profiles a job can start from.

use clap::Args;
use loraflow::core::catalogue::ParamValue;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::out;

#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// A base model id (see `loraflow models`).
    pub model: String,
    /// The engine that trains it: native, kohya, ai-toolkit.
    #[arg(long, default_value = "native")]
    pub engine: String,
    #[command(flatten)]
    pub conn: Connection,
}

fn value(v: &Option<pb::ParamValue>) -> Option<ParamValue> {
    v.clone().and_then(|v| ParamValue::try_from(v).ok())
}

fn type_name(t: i32) -> String {
    pb::ParamType::try_from(t)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("PARAM_TYPE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

/// `1e-06..0.01`, `a|b|c`, `multiple of 64`, joined; `-` when unbounded.
fn bounds(p: &pb::EffectiveParam) -> String {
    let mut parts = Vec::new();
    match (p.min, p.max) {
        (None, None) => {}
        (min, max) => parts.push(format!(
            "{}..{}",
            min.map(|m| m.to_string()).unwrap_or_default(),
            max.map(|m| m.to_string()).unwrap_or_default()
        )),
    }
    if !p.choices.is_empty() {
        parts.push(p.choices.join("|"));
    }
    if let Some(m) = p.multiple_of {
        parts.push(format!("multiple of {m}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub async fn params(args: ParamsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let schema = client
        .get_parameter_schema(pb::GetParameterSchemaRequest {
            base_model: args.model.clone(),
            engine: args.engine.clone(),
        })
        .await
        .map_err(|s| {
            status_error(
                &format!(
                    "cannot read the parameters of {} with engine {}",
                    args.model, args.engine
                ),
                s,
            )
        })?
        .into_inner();
    if args.conn.json {
        let params: Vec<_> = schema
            .params
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "type": type_name(p.r#type),
                    "default": value(&p.default_value),
                    "min": p.min,
                    "max": p.max,
                    "choices": p.choices,
                    "multiple_of": p.multiple_of,
                    "description": p.description,
                })
            })
            .collect();
        let profiles: serde_json::Map<_, _> = schema
            .profiles
            .iter()
            .map(|p| {
                let values: serde_json::Map<_, _> = p
                    .values
                    .iter()
                    .filter_map(|(k, v)| {
                        let v = value(&Some(v.clone()))?;
                        Some((k.clone(), serde_json::to_value(v).ok()?))
                    })
                    .collect();
                (p.name.clone(), values.into())
            })
            .collect();
        out!(
            "{}",
            serde_json::json!({
                "base_model": args.model,
                "engine": args.engine,
                "params": params,
                "profiles": profiles,
            })
        )?;
        return Ok(());
    }
    let width = schema
        .params
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out!(
        "{:<width$}  {:<6}  {:<14}  BOUNDS/CHOICES",
        "NAME",
        "TYPE",
        "DEFAULT"
    )?;
    for p in &schema.params {
        let default = value(&p.default_value)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<width$}  {:<6}  {:<14}  {}",
            p.name,
            type_name(p.r#type),
            default,
            bounds(p)
        )?;
    }
    if !schema.profiles.is_empty() {
        let names: Vec<_> = schema.profiles.iter().map(|p| p.name.as_str()).collect();
        out!("profiles: {}", names.join(", "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_range_choices_and_step() {
        let p = pb::EffectiveParam {
            min: Some(64.0),
            max: Some(2048.0),
            multiple_of: Some(64),
            ..Default::default()
        };
        assert_eq!(bounds(&p), "64..2048, multiple of 64");
        let p = pb::EffectiveParam {
            choices: vec!["adamw".into(), "lion".into()],
            ..Default::default()
        };
        assert_eq!(bounds(&p), "adamw|lion");
        assert_eq!(bounds(&pb::EffectiveParam::default()), "-");
    }
}
