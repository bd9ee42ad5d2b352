//! Base models a tenant registers: a name and a URI under the tenant's
//! uploads or allowed roots (see [`crate::tenancy`]). The server checks the
//! model before anything is written (the same check as `loraflow models
//! check`: family, missing components, whether the native engine trains
//! it) and keeps it in the store ([`loraflow_store::Records`]), so it
//! survives a restart and every replica on the store sees it. A tenant
//! sees and uses only its own; a job names one as its `base_model`, is
//! checked against the catalogue's rules of its family, and carries its URI
//! to the executor (see [`loraflow_core::catalogue::custom`]).

use std::path::{Path, PathBuf};

use loraflow_core::catalogue::custom::{
    MAX_LABEL_CHARS, MAX_MODELS_PER_TENANT, MAX_NAME_CHARS, MAX_URI_BYTES,
};
use loraflow_core::catalogue::{CustomModel, Engine as EngineKind, ModelFamily};
use loraflow_core::ids::{BaseModelId, TenantId};
use loraflow_core::limits::quote;
use loraflow_core::validation::Violations;
use loraflow_executors::model_check::{self, Layout};

use super::Engine;
use crate::error::{Error, Result};
use crate::tenancy::Refusal;

/// The record kind registered models are stored under.
const KIND: &str = "base_model";

/// A request to register a base model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterModel {
    /// What jobs will name it by: lowercase letters, digits, `-`, `_`,
    /// `.`; not a catalogue id.
    pub name: String,
    /// A diffusers folder under the tenant's uploads or allowed roots
    /// (`file:///srv/studio/models/my-sd/` or an absolute path).
    pub uri: String,
    /// For people; empty: one is made from the name and family.
    pub label: String,
    /// The family the caller expects; checked against what the model is.
    pub family: Option<ModelFamily>,
    /// The engine that will train it; `None`: the native engine.
    pub engine: Option<EngineKind>,
    /// GPU memory a training step needs; 0: it trains on CPU.
    pub min_vram_gb: u32,
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    let mut v = Violations::default();
    v.push(field, message);
    Error::InvalidArgument(v)
}

/// What a model's VAE and UNet downsample an image by, together, read from
/// their configs: `2^(levels - 1)` each (SD1.5: 8 × 8 = 64).
fn pixel_multiple(dir: &Path) -> Option<u32> {
    let levels = |component: &str| -> Option<u32> {
        let text = std::fs::read_to_string(dir.join(component).join("config.json")).ok()?;
        let config: serde_json::Value = serde_json::from_str(&text).ok()?;
        let n = config["block_out_channels"].as_array()?.len() as u32;
        (1..=8).contains(&n).then(|| 1 << (n - 1))
    };
    Some(levels("vae")? * levels("unet")?)
}

impl Engine {
    /// The name's problems, if any.
    fn check_model_name(&self, name: &str) -> Option<String> {
        let shown = quote(name);
        if name.is_empty() {
            return Some("required: the name jobs will give as base_model".into());
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Some(format!(
                "{shown} is {} characters; at most {MAX_NAME_CHARS}",
                name.chars().count()
            ));
        }
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !plain {
            return Some(format!(
                "{shown} must start with a lowercase letter or digit and hold only lowercase \
                 letters, digits, '-', '_' and '.'"
            ));
        }
        let id = BaseModelId::from(name);
        let catalogue = self.catalogue();
        if catalogue.base_model(&id).is_some() || catalogue.withheld.contains_key(&id) {
            return Some(format!(
                "{shown} is a base model of the catalogue; choose another name"
            ));
        }
        None
    }

    /// The local folder a `file://` URI (or absolute path) names.
    fn model_path(uri: &str) -> Result<PathBuf> {
        if uri.starts_with('/') {
            return Ok(PathBuf::from(uri));
        }
        let url = url::Url::parse(uri)
            .map_err(|e| invalid("uri", format!("{} is not a URI ({e})", quote(uri))))?;
        if url.scheme() != "file" {
            return Err(invalid(
                "uri",
                format!(
                    "{} is not a file:// URI; this server checks a model it can read on its own \
                     disk: give a file:// URI or an absolute path under your allowed roots",
                    quote(uri)
                ),
            ));
        }
        url.to_file_path()
            .map_err(|()| invalid("uri", format!("{} is not a local path", quote(uri))))
    }

    /// Register `request` as one of `tenant`'s base models, once checked:
    /// the name and URI within their limits, the URI under the tenant's
    /// roots, and the model one the engine can train. A refusal writes
    /// nothing.
    pub async fn register_base_model(
        &self,
        tenant: &TenantId,
        request: RegisterModel,
    ) -> Result<CustomModel> {
        let mut v = Violations::default();
        if let Some(problem) = self.check_model_name(&request.name) {
            v.push("name", problem);
        }
        if request.uri.is_empty() {
            v.push(
                "uri",
                "required: a diffusers folder under your uploads or allowed roots",
            );
        } else if request.uri.len() > MAX_URI_BYTES {
            v.push(
                "uri",
                format!(
                    "{} bytes is over the limit of {MAX_URI_BYTES}",
                    request.uri.len()
                ),
            );
        }
        if request.label.chars().count() > MAX_LABEL_CHARS {
            v.push(
                "label",
                format!(
                    "{} characters is over the limit of {MAX_LABEL_CHARS}",
                    request.label.chars().count()
                ),
            );
        }
        let engine = request.engine.unwrap_or(EngineKind::Native);
        if engine != EngineKind::Native {
            v.push(
                "engine",
                format!(
                    "{engine} cannot train a registered model: the kohya and ai-toolkit engines \
                     read models installed on their worker; register it for the native engine \
                     or install it on the worker"
                ),
            );
        }
        if request.min_vram_gb > 1024 {
            v.push(
                "min_vram_gb",
                format!("{} is over the limit of 1024", request.min_vram_gb),
            );
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        // Before anything is read: the URI must be the tenant's to name.
        match self.inner.tenancy.check(tenant, &request.uri) {
            Ok(()) => {}
            Err(Refusal::Denied(m)) => {
                let mut v = Violations::default();
                v.push("uri", m);
                tracing::warn!(%tenant, uri = %quote(&request.uri), "a model URI outside the tenant's roots was refused");
                return Err(Error::PermissionDenied(v));
            }
            Err(Refusal::Invalid(m)) => return Err(invalid("uri", m)),
        }
        let path = Self::model_path(&request.uri)?;
        // A path is kept as the URI the worker fetches.
        let uri = if request.uri.starts_with('/') {
            let mut u = url::Url::from_directory_path(&path)
                .map_err(|()| {
                    invalid(
                        "uri",
                        format!("{} is not an absolute path", quote(&request.uri)),
                    )
                })?
                .to_string();
            if !request.uri.ends_with('/') {
                u.pop();
            }
            u
        } else {
            request.uri.clone()
        };
        let checked = tokio::task::spawn_blocking({
            let path = path.clone();
            move || model_check::check_model(&path)
        })
        .await
        .map_err(|e| invalid("uri", format!("the model check stopped: {e}")))?;
        let report = checked.map_err(|e| invalid("uri", e.to_string()))?;
        let mut problems = Vec::new();
        if let Some(family) = request.family
            && family != report.family
        {
            problems.push(format!(
                "it is a {} model ({}), not {family}",
                report.family, report.evidence
            ));
        }
        if report.layout != Layout::Diffusers {
            problems.push(
                "the native engine trains a registered model from a diffusers folder \
                 (model_index.json and one folder per component); convert the single file \
                 or register its diffusers release"
                    .to_owned(),
            );
        }
        if !report.missing.is_empty() {
            problems.push(format!("it lacks {}", report.missing.join("; ")));
        }
        if let Some(why) = &report.native_unsupported {
            problems.push(why.clone());
        }
        if !problems.is_empty() {
            return Err(invalid(
                "uri",
                format!(
                    "{} is not a model the native engine can train: {}",
                    quote(&request.uri),
                    problems.join("; ")
                ),
            ));
        }
        let existing = self.base_models_of(tenant).await?;
        if existing.len() >= MAX_MODELS_PER_TENANT {
            return Err(invalid(
                "name",
                format!(
                    "tenant {tenant} has {} registered models, the most allowed; delete one first",
                    existing.len()
                ),
            ));
        }
        let pixel_multiple = pixel_multiple(&path).filter(|&p| p != report.family.pixel_multiple());
        let model = CustomModel {
            name: BaseModelId::from(request.name.as_str()),
            uri,
            label: request.label,
            family: report.family,
            engines: vec![engine],
            min_vram_gb: request.min_vram_gb,
            pixel_multiple,
            evidence: report.evidence,
            registered_at: self.services().clock.now(),
        };
        let value = serde_json::to_value(&model).map_err(loraflow_store::Error::from)?;
        let records = self.store().records();
        if !records
            .insert(KIND, tenant.as_str(), model.name.as_str(), &value)
            .await?
        {
            return Err(Error::ModelExists {
                tenant: tenant.to_string(),
                name: model.name.to_string(),
            });
        }
        tracing::info!(%tenant, name = %model.name, uri = %model.uri, family = %model.family, "base model registered");
        self.refresh_base_models(tenant).await?;
        Ok(model)
    }

    /// `tenant`'s registered base models, by name, as the store holds them.
    pub async fn base_models_of(&self, tenant: &TenantId) -> Result<Vec<CustomModel>> {
        let records = self
            .store()
            .records()
            .list_of(KIND, tenant.as_str())
            .await?;
        let mut out = Vec::new();
        for r in records {
            match serde_json::from_value::<CustomModel>(r.value) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(%tenant, name = %r.name, "a stored base model does not load: {e}")
                }
            }
        }
        Ok(out)
    }

    /// Delete `tenant`'s registered base model `name`. Jobs created on it
    /// keep it (their `JobCreated` event records it); new jobs cannot name
    /// it.
    pub async fn delete_base_model(&self, tenant: &TenantId, name: &str) -> Result<()> {
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(invalid(
                "name",
                format!("{} is not a registered model's name", quote(name)),
            ));
        }
        let deleted = self
            .store()
            .records()
            .delete(KIND, tenant.as_str(), name)
            .await?;
        if !deleted {
            return Err(Error::ModelNotFound {
                tenant: tenant.to_string(),
                name: name.to_owned(),
            });
        }
        tracing::info!(%tenant, name, "base model deleted");
        self.refresh_base_models(tenant).await
    }

    /// Load `tenant`'s models from the store into what the create decision
    /// reads (another replica may have registered one meanwhile).
    pub(crate) async fn refresh_base_models(&self, tenant: &TenantId) -> Result<()> {
        let models = self.base_models_of(tenant).await?;
        self.services().custom_models.set(tenant, models);
        Ok(())
    }

    /// The registered model a spec names must still be under the tenant's
    /// roots (the operator may have narrowed them since it was registered).
    pub(crate) fn check_model_uri(
        &self,
        tenant: &TenantId,
        base_model: &BaseModelId,
    ) -> Result<()> {
        let Some(model) = self.services().custom_models.get(tenant, base_model) else {
            return Ok(());
        };
        if self.catalogue().base_model(base_model).is_some() {
            return Ok(());
        }
        match self.inner.tenancy.check(tenant, &model.uri) {
            Ok(()) => Ok(()),
            Err(Refusal::Denied(m) | Refusal::Invalid(m)) => {
                let mut v = Violations::default();
                v.push("base_model", m);
                Err(Error::PermissionDenied(v))
            }
        }
    }
}
