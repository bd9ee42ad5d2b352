//! What a client asks for when it creates a job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::artifact::Sha256;
use crate::catalogue::{Catalogue, CustomModel, Engine, Params};
use crate::ids::{BaseModelId, TenantId};
use crate::validation::Violations;
use crate::webhook::WebhookSpec;
use crate::workflow::WorkflowSpec;

/// Where the training images are (a folder or archive in the artifact store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    pub uri: String,
    /// Digest of the uploaded archive, when the client knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
}

/// How the published LoRA is named: `subject` (a character, a style) and `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Naming {
    pub subject: String,
    #[serde(default = "default_version")]
    pub version: String,
}

fn default_version() -> String {
    "v1".to_owned()
}

/// A training job as a client specifies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub tenant: TenantId,
    pub base_model: BaseModelId,
    pub engine: Engine,
    /// A named set of defaults (`quick_test`, `regular`, `high_quality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Parameters as given; validated against the catalogue on creation.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = std::collections::BTreeMap<String, crate::catalogue::ParamValue>))]
    pub params: Params,
    pub dataset: DatasetRef,
    #[serde(default)]
    pub sample_prompts: Vec<String>,
    /// Higher runs first. Between -100 and 100.
    #[serde(default)]
    pub priority: i32,
    pub naming: Naming,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Replaces the standard LoRA workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowSpec>,
    /// Callback URLs and the events each receives (see [`crate::webhook`]).
    /// Specs stored before webhooks existed load with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
}

/// The default of [`Limits::sample_prompts`](crate::limits::Limits::sample_prompts).
pub const MAX_SAMPLE_PROMPTS: usize = 16;
/// The default of [`Limits::prompt_chars`](crate::limits::Limits::prompt_chars).
pub const MAX_PROMPT_CHARS: usize = 1000;
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

/// Why `spec`'s (model, engine) pair is not offered, when the catalogue
/// lists the model with `withheld` engines this build has no executor for.
fn not_offered<'a>(
    spec: &JobSpec,
    withheld: impl Iterator<Item = &'a Engine>,
    catalogue: &Catalogue,
) -> String {
    let withheld: Vec<&str> = withheld.map(|e| e.as_str()).collect();
    format!(
        "base model {} with engine {} is not offered: this build has no executor for {}; offered (model (engines)): {}",
        spec.base_model,
        spec.engine,
        withheld.join(" or "),
        catalogue.offered()
    )
}

impl JobSpec {
    /// Check everything but the service status; return the resolved
    /// parameters. `custom` is the tenant's registered model of that name,
    /// when the catalogue has none: its family's rules apply.
    pub(crate) fn validate(
        &self,
        catalogue: &Catalogue,
        custom: Option<&CustomModel>,
    ) -> Result<Params, Violations> {
        let mut v = Violations::default();
        let mut resolved = None;
        let custom = custom.map(CustomModel::as_base_model);
        let withheld = match custom {
            Some(_) => None,
            None => catalogue.withheld.get(&self.base_model),
        };
        match custom.as_ref().or_else(|| catalogue.base_model(&self.base_model)) {
            // Listed, but with no engine this build has.
            None if withheld.is_some() => v.push(
                "engine",
                not_offered(self, withheld.into_iter().flatten(), catalogue),
            ),
            None => v.push(
                "base_model",
                format!(
                    "unknown base model {:?}; available: {} (or a model the tenant registered: `loraflow models register`)",
                    self.base_model.as_str(),
                    catalogue
                        .base_models
                        .iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(model) if model.disabled => v.push(
                "base_model",
                format!("base model {} is disabled by the operator", model.id),
            ),
            Some(_) if withheld.is_some_and(|w| w.contains(&self.engine)) => v.push(
                "engine",
                not_offered(self, withheld.into_iter().flatten(), catalogue),
            ),
            Some(model) if !model.supports(self.engine) => v.push(
                "engine",
                format!(
                    "engine {} cannot train base model {}; it supports {}",
                    self.engine,
                    model.id,
                    model
                        .engines
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(model) => {
                match catalogue.schema.resolve(
                    model,
                    self.engine,
                    self.profile.as_deref(),
                    &self.params,
                ) {
                    Ok(p) => resolved = Some(p),
                    Err(e) => v.extend(e),
                }
            }
        }
        if self.tenant.as_str().trim().is_empty() {
            v.push("tenant", "tenant must not be empty");
        }
        if self.dataset.uri.trim().is_empty() {
            v.push("dataset.uri", "dataset uri must not be empty");
        }
        // Counts and lengths are the limits' (`crate::limits`), checked
        // with the spec by the `create` decision.
        for (i, p) in self.sample_prompts.iter().enumerate() {
            if p.trim().is_empty() {
                v.push(format!("sample_prompts[{i}]"), "sample prompt is empty");
            }
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            v.push(
                "priority",
                format!("priority {} is outside -100..=100", self.priority),
            );
        }
        if self.naming.subject.trim().is_empty() {
            v.push(
                "naming.subject",
                "subject must not be empty (it names the published LoRA)",
            );
        }
        if self.naming.version.trim().is_empty() {
            v.push("naming.version", "version must not be empty");
        }
        for key in self.labels.keys() {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                let shown: String = key.chars().take(40).collect();
                v.push(
                    format!("labels.{shown}"),
                    format!(
                        "label key {} must be letters, digits, '-', '_', '.', '/' (at least one)",
                        crate::limits::quote(key)
                    ),
                );
            }
        }
        crate::webhook::spec::validate(&self.webhooks, &mut v);
        match (v.is_empty(), resolved) {
            (true, Some(p)) => Ok(p),
            _ => Err(v),
        }
    }
}

/// The dataset as admitted at submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdmittedDataset {
    pub image_count: u32,
    pub total_bytes: u64,
    /// Digest of the dataset manifest (file names, sizes, digests).
    pub manifest_sha256: Sha256,
}
