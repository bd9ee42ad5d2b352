//! Domain ↔ wire conversions, one file per area.
//!
//! Domain → wire never fails: `From` impls (owned, so callers move or clone
//! once). Wire → domain checks what the wire cannot express (required
//! messages, enum values, digests, durations, finite numbers) and returns
//! [`Violations`] listing every bad field at once, each with its dotted path
//! relative to the message converted (`dataset.uri`,
//! `workflow.steps[2].timeouts.heartbeat`, `params.epochs`). Callers nest the
//! paths under the request field (`job.`) with [`nest`]. Client input never
//! makes these conversions panic.
//!
//! What the catalogue decides (known base models, parameter bounds, workflow
//! shape) is not checked here: the aggregate does it, so that a job created
//! through the library and one created over gRPC are judged alike.
//!
//! - [`time`] — `Timestamp` and `Duration`.
//! - [`json`] — `serde_json::Value` ↔ `google.protobuf.Struct`/`Value`.
//! - [`params`] — `ParamValue` and parameter maps.
//! - [`spec`] — `JobSpec`, `DatasetRef`, `Naming`.
//! - [`workflow`] — `WorkflowSpec`, `StepSpec`, `Requirements`, `Timeouts`, `RetryPolicy`.
//! - [`artifact`] — `Artifact`, `ArtifactKind`, `EpochOutput`, digests.
//! - [`step`] — `StepProgress`, `StepError`, `StepErrorKind`, `StepStatus`.
//! - [`state`] — `JobState`, `FailureReason`, `Failure`.
//! - [`catalogue`] — `BaseModel`, `EffectiveParam`, `ParamType`, `ServiceStatus`, profiles.
//! - [`job`] — the output-only `Job` resource, built from a `TrainingJob`.
//! - [`event`] — `JobEventRecord`.
//! - [`requests`] — `JobService` requests → ids and commands.
//! - [`sampling`] — `SampleOverrides` of a `SampleNow` request.
//! - [`executor`] — `ExecutorService` requests → commands.
//! - [`assignment`] — `Capabilities`, `StepAssignment`, and the requests a worker sends.
//! - [`webhook`] — `Webhook` in specs, and the webhook delivery log.

pub mod artifact;
pub mod assignment;
pub mod catalogue;
pub mod event;
pub mod executor;
pub mod job;
pub mod json;
pub mod params;
pub mod requests;
pub mod sampling;
pub mod spec;
pub mod state;
pub mod step;
pub mod time;
pub mod webhook;
pub mod workflow;

use loraflow_core::validation::{FieldViolation, Violations};

/// Prefix every violation's field with `prefix`: `nest(v, "job")` turns
/// `params.epochs` into `job.params.epochs`, `[2].id` into `job[2].id`, and a
/// violation of the value itself (empty field) into `job`.
pub fn nest(violations: Violations, prefix: &str) -> Violations {
    Violations(
        violations
            .0
            .into_iter()
            .map(|v| FieldViolation::new(join(prefix, &v.field), v.description))
            .collect(),
    )
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// A violation of the value itself; the caller's [`nest`] names the field.
pub(crate) fn invalid(description: impl Into<String>) -> Violations {
    let mut v = Violations::default();
    v.push("", description);
    v
}

/// A required message or value was not sent.
pub(crate) fn required<T>(value: Option<T>) -> Result<T, Violations> {
    value.ok_or_else(|| invalid("required; it is missing"))
}

/// Gathers the outcome of converting several fields so that every bad field
/// is reported, not only the first.
#[derive(Debug, Default)]
pub(crate) struct Fields(Violations);

impl Fields {
    /// Keep the value of the field at `path`, or its violations nested under `path`.
    pub fn take<T>(&mut self, path: &str, result: Result<T, Violations>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(v) => {
                self.0.extend(nest(v, path));
                None
            }
        }
    }

    /// Convert every item of a repeated field; paths are `path[i]`.
    pub fn each<W, T>(
        &mut self,
        path: &str,
        items: impl IntoIterator<Item = W>,
        convert: impl Fn(W) -> Result<T, Violations>,
    ) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, w)| self.take(&format!("{path}[{i}]"), convert(w)))
            .collect()
    }

    pub fn push(&mut self, path: impl Into<String>, description: impl Into<String>) {
        self.0.push(path, description);
    }

    /// `value` if no field was bad.
    pub fn finish<T>(self, value: T) -> Result<T, Violations> {
        self.0.into_result(value)
    }

    pub fn into_violations(self) -> Violations {
        self.0
    }
}

/// Decode a wire enum field: unknown numbers and UNSPECIFIED are violations.
pub(crate) fn enum_value<W, D>(raw: i32, type_name: &str) -> Result<D, Violations>
where
    W: TryFrom<i32>,
    D: TryFrom<W, Error = Violations>,
{
    let wire = W::try_from(raw).map_err(|_| invalid(format!("unknown {type_name} value {raw}")))?;
    D::try_from(wire)
}

/// Both directions between a domain enum and its wire enum. The wire enum's
/// UNSPECIFIED value (and any value added later that this build does not
/// know) is refused as a violation.
macro_rules! enum_conversions {
    ($domain:ty, $wire:ty, $unspecified:literal, { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl From<$domain> for $wire {
            fn from(value: $domain) -> Self {
                match value {
                    $(<$domain>::$d => <$wire>::$w),+
                }
            }
        }

        impl TryFrom<$wire> for $domain {
            type Error = loraflow_core::validation::Violations;

            fn try_from(value: $wire) -> Result<Self, Self::Error> {
                match value {
                    $(<$wire>::$w => Ok(<$domain>::$d),)+
                    _ => Err($crate::convert::invalid(concat!(
                        "required; ",
                        $unspecified,
                        " is not a value"
                    ))),
                }
            }
        }
    };
}
pub(crate) use enum_conversions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_joins_fields_indexes_and_the_value_itself() {
        let mut v = Violations::default();
        v.push("params.epochs", "a");
        v.push("[2].id", "b");
        v.push("", "c");
        let fields: Vec<_> = nest(v, "job").0.into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["job.params.epochs", "job[2].id", "job"]);
    }
}
