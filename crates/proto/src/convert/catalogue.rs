//! The catalogue on the wire: base models, effective parameters, profiles,
//! the service status.

use loraflow_core::catalogue::{
    BaseModel, CustomModel, EffectiveParam, Engine, ModelFamily, ParamSchema, ParamType,
    ParamValue, ServiceStatus,
};
use loraflow_core::validation::Violations;

use super::params::params_to_wire;
use super::spec::engine;
use super::{Fields, enum_conversions, enum_value, invalid, required};
use crate::pb::v1 as pb;

enum_conversions!(ParamType, pb::ParamType, "PARAM_TYPE_UNSPECIFIED", {
    Int <=> Int,
    Float <=> Float,
    Bool <=> Bool,
    String <=> String,
});

const FAMILIES: [ModelFamily; 4] = [
    ModelFamily::Sd15,
    ModelFamily::Sd2,
    ModelFamily::Sdxl,
    ModelFamily::Flux,
];

/// A model family from its wire name (`sd15`, `sd2`, `sdxl`, `flux`): the
/// names the catalogue file and `Display` use.
pub fn model_family(name: &str) -> Result<ModelFamily, Violations> {
    FAMILIES
        .into_iter()
        .find(|f| f.to_string() == name)
        .ok_or_else(|| {
            invalid(format!(
                "unknown model family {name:?}; expected one of sd15, sd2, sdxl, flux"
            ))
        })
}

impl From<BaseModel> for pb::BaseModel {
    fn from(m: BaseModel) -> Self {
        Self {
            id: m.id.0,
            label: m.label,
            family: m.family.to_string(),
            engines: m.engines.iter().map(|e| e.as_str().to_owned()).collect(),
            min_vram_gb: m.min_vram_gb,
            disabled: m.disabled,
            pixel_multiple: m.pixel_multiple.unwrap_or(0),
            uri: String::new(),
            evidence: String::new(),
        }
    }
}

/// A tenant's registered model as the catalogue's models are listed, with
/// its URI and the evidence of its family.
impl From<CustomModel> for pb::BaseModel {
    fn from(m: CustomModel) -> Self {
        let (uri, evidence) = (m.uri.clone(), m.evidence.clone());
        Self {
            uri,
            evidence,
            ..pb::BaseModel::from(m.as_base_model())
        }
    }
}

impl TryFrom<pb::BaseModel> for BaseModel {
    type Error = Violations;

    fn try_from(m: pb::BaseModel) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        if m.id.is_empty() {
            f.push("id", "required");
        }
        let family = f.take("family", model_family(&m.family));
        let engines: Vec<Engine> = f.each("engines", m.engines, |e| engine(&e));
        let Some(family) = family else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            id: m.id.into(),
            label: m.label,
            family,
            engines,
            min_vram_gb: m.min_vram_gb,
            disabled: m.disabled,
            pixel_multiple: (m.pixel_multiple > 0).then_some(m.pixel_multiple),
        })
    }
}

impl From<EffectiveParam> for pb::EffectiveParam {
    fn from(p: EffectiveParam) -> Self {
        Self {
            name: p.name,
            r#type: pb::ParamType::from(p.ty) as i32,
            default_value: Some(p.default.into()),
            min: p.min,
            max: p.max,
            choices: p.choices.unwrap_or_default(),
            description: p.description,
            multiple_of: p.multiple_of,
        }
    }
}

/// The inverse of the above. An empty `choices` list reads as "any string"
/// (`None`), the only meaning an empty list can have.
impl TryFrom<pb::EffectiveParam> for EffectiveParam {
    type Error = Violations;

    fn try_from(p: pb::EffectiveParam) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let ty = f.take(
            "type",
            enum_value::<pb::ParamType, _>(p.r#type, "ParamType"),
        );
        let default = f.take(
            "default_value",
            required(p.default_value).and_then(ParamValue::try_from),
        );
        let (Some(ty), Some(default)) = (ty, default) else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            name: p.name,
            ty,
            default,
            min: p.min,
            max: p.max,
            choices: (!p.choices.is_empty()).then_some(p.choices),
            multiple_of: p.multiple_of,
            description: p.description,
        })
    }
}

impl From<ServiceStatus> for pb::ServiceStatus {
    fn from(s: ServiceStatus) -> Self {
        Self {
            available: s.available,
            message: s.message.unwrap_or_default(),
            blocked_models: s.blocked_models.into_iter().map(|m| m.0).collect(),
            max_images: s.max_images,
            max_dataset_bytes: s.max_dataset_bytes,
            max_retries: s.max_retries,
            tenant: String::new(),
            dataset_root: String::new(),
        }
    }
}

impl From<pb::ServiceStatus> for ServiceStatus {
    fn from(s: pb::ServiceStatus) -> Self {
        Self {
            available: s.available,
            message: (!s.message.is_empty()).then_some(s.message),
            blocked_models: s.blocked_models.into_iter().map(Into::into).collect(),
            max_images: s.max_images,
            max_dataset_bytes: s.max_dataset_bytes,
            max_retries: s.max_retries,
        }
    }
}

/// The answer to `GetParameterSchema`: the parameters as they apply to
/// `model` and `engine`, and every profile, both in name order.
pub fn parameter_schema(
    schema: &ParamSchema,
    model: &BaseModel,
    engine: Engine,
) -> pb::GetParameterSchemaResponse {
    pb::GetParameterSchemaResponse {
        params: schema
            .effective_for(model, engine)
            .into_iter()
            .map(Into::into)
            .collect(),
        profiles: schema
            .profiles
            .iter()
            .map(|(name, values)| pb::Profile {
                name: name.clone(),
                values: params_to_wire(values.clone()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::catalogue::Catalogue;

    #[test]
    fn builtin_base_models_round_trip() {
        for m in Catalogue::builtin().base_models {
            assert_eq!(BaseModel::try_from(pb::BaseModel::from(m.clone())), Ok(m));
        }
    }

    #[test]
    fn every_family_round_trips() {
        for fam in FAMILIES {
            assert_eq!(model_family(&fam.to_string()), Ok(fam));
        }
    }

    #[test]
    fn effective_params_round_trip() {
        let catalogue = Catalogue::builtin();
        let mut seen = 0;
        for model in &catalogue.base_models {
            for &engine in &model.engines {
                for p in catalogue.schema.effective_for(model, engine) {
                    assert_eq!(
                        EffectiveParam::try_from(pb::EffectiveParam::from(p.clone())),
                        Ok(p)
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn every_param_type_round_trips() {
        for ty in [
            ParamType::Int,
            ParamType::Float,
            ParamType::Bool,
            ParamType::String,
        ] {
            assert_eq!(ParamType::try_from(pb::ParamType::from(ty)), Ok(ty));
        }
    }

    #[test]
    fn service_status_round_trips() {
        let mut s = ServiceStatus::default();
        for status in [s.clone(), {
            s.available = false;
            s.message = Some("maintenance until 14:00".into());
            s.blocked_models.insert("sdxl".into());
            s
        }] {
            assert_eq!(
                ServiceStatus::from(pb::ServiceStatus::from(status.clone())),
                status
            );
        }
    }

    #[test]
    fn schema_response_lists_params_and_profiles() {
        let catalogue = Catalogue::builtin();
        let model = catalogue.base_model(&"sd15".into()).unwrap();
        let r = parameter_schema(&catalogue.schema, model, Engine::Native);
        assert!(r.params.iter().any(|p| p.name == "epochs"));
        assert_eq!(
            r.profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            catalogue.profiles().collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_base_models_name_their_fields() {
        let wire = pb::BaseModel {
            id: String::new(),
            family: "sd3".into(),
            engines: vec!["native".into(), "onnx".into()],
            ..Default::default()
        };
        let err = BaseModel::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["id", "family", "engines[1]"]);
    }

    #[test]
    fn effective_param_needs_a_type_and_default() {
        let err = EffectiveParam::try_from(pb::EffectiveParam::default()).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["type", "default_value"]);
    }
}
