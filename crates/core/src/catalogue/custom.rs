//! Base models a tenant registers itself: a name, where the model is (a URI
//! under the tenant's uploads or allowed roots), and what the server found
//! when it checked it (family, engines). A job names one by its name
//! (`base_model = "<name>"`); it is then validated against the catalogue's
//! parameter rules of its family, and its URI travels with the step to the
//! executor, which fetches it like a dataset.
//!
//! [`TenantModels`] is what the create decision reads: the engine fills it
//! from the store before a job is created, and the `JobCreated` event
//! records the model as it was, so the job never depends on the registry
//! again (a model deleted later does not change a job's history).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BaseModel, Engine, ModelFamily};
use crate::ids::{BaseModelId, TenantId};

/// The longest name of a registered model.
pub const MAX_NAME_CHARS: usize = 64;
/// The longest URI of a registered model.
pub const MAX_URI_BYTES: usize = 2048;
/// The longest label of a registered model.
pub const MAX_LABEL_CHARS: usize = 200;
/// Models one tenant may register.
pub const MAX_MODELS_PER_TENANT: usize = 100;

/// A base model a tenant registered, as checked at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CustomModel {
    /// What jobs name it by (`base_model`); never a catalogue id.
    pub name: BaseModelId,
    /// Where it is: a diffusers folder (`.../my-model/`) or a `.safetensors`
    /// file, under the tenant's uploads or allowed roots.
    pub uri: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    pub family: ModelFamily,
    /// Engines that may train it (checked at registration).
    pub engines: Vec<Engine>,
    /// GPU memory a training step needs; 0: it trains on CPU.
    #[serde(default)]
    pub min_vram_gb: u32,
    /// What its VAE and UNet downsample an image by, together, when it
    /// differs from its family's (read from its configs at registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_multiple: Option<u32>,
    /// How the family was told (`unet/config.json cross_attention_dim 768`).
    #[serde(default)]
    pub evidence: String,
    pub registered_at: DateTime<Utc>,
}

impl CustomModel {
    /// The model as the catalogue's rules see it: a base model of its family.
    pub fn as_base_model(&self) -> BaseModel {
        BaseModel {
            id: self.name.clone(),
            label: if self.label.is_empty() {
                format!("{} (registered, {})", self.name, self.family)
            } else {
                self.label.clone()
            },
            family: self.family,
            engines: self.engines.clone(),
            min_vram_gb: self.min_vram_gb,
            disabled: false,
            pixel_multiple: self.pixel_multiple,
        }
    }
}

/// Every tenant's registered models, as the create decision reads them.
/// Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct TenantModels {
    inner: Arc<RwLock<HashMap<TenantId, BTreeMap<BaseModelId, CustomModel>>>>,
}

impl TenantModels {
    /// `tenant`'s model `name`, if it registered one.
    pub fn get(&self, tenant: &TenantId, name: &BaseModelId) -> Option<CustomModel> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)?.get(name).cloned()
    }

    /// `tenant`'s models, by name.
    pub fn of(&self, tenant: &TenantId) -> Vec<CustomModel> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Replace `tenant`'s models with `models` (as the store holds them now).
    pub fn set(&self, tenant: &TenantId, models: impl IntoIterator<Item = CustomModel>) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let models: BTreeMap<BaseModelId, CustomModel> =
            models.into_iter().map(|m| (m.name.clone(), m)).collect();
        if models.is_empty() {
            map.remove(tenant);
        } else {
            map.insert(tenant.clone(), models);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> CustomModel {
        CustomModel {
            name: name.into(),
            uri: format!("file:///srv/studio/{name}/"),
            label: String::new(),
            family: ModelFamily::Sd15,
            engines: vec![Engine::Native],
            min_vram_gb: 0,
            pixel_multiple: Some(16),
            evidence: "unet/config.json cross_attention_dim 32".into(),
            registered_at: DateTime::<chrono::Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_tenant_sees_only_its_own_models() {
        let models = TenantModels::default();
        let (studio, other) = (TenantId::new("studio"), TenantId::new("other"));
        models.set(&studio, [model("mine"), model("also-mine")]);
        assert!(models.get(&studio, &"mine".into()).is_some());
        assert!(models.get(&other, &"mine".into()).is_none());
        assert_eq!(models.of(&studio).len(), 2);
        models.set(&studio, []);
        assert!(models.of(&studio).is_empty());
    }

    #[test]
    fn a_registered_model_is_a_base_model_of_its_family() {
        let m = model("mine").as_base_model();
        assert_eq!(m.family, ModelFamily::Sd15);
        assert_eq!(m.pixel_multiple(), 16);
        assert!(m.supports(Engine::Native) && !m.supports(Engine::Kohya));
        assert!(m.label.contains("registered"), "{}", m.label);
    }
}
