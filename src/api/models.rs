//! The base models a tenant may train on: the catalogue's and the ones it
//! registered itself (`ListBaseModels`, `RegisterBaseModel`,
//! `DeleteBaseModel`, `GetParameterSchema`).

use loraflow_core::catalogue::{BaseModel, CustomModel, Engine as TrainingEngine};
use loraflow_core::validation::Violations;
use loraflow_proto::convert::catalogue::model_family;
use loraflow_proto::convert::spec::engine as engine_name;
use loraflow_proto::pb::v1 as pb;
use tracing::Instrument;

use super::{ApiError, Requester, Via};
use crate::engine::{Engine, RegisterModel};

/// The models a tenant may name: the catalogue's, then its own.
pub struct Models {
    pub catalogue: Vec<BaseModel>,
    pub own: Vec<CustomModel>,
}

/// `GetParameterSchema`: the checked model and engine; the schema itself is
/// the catalogue's ([`Engine::catalogue`]), rendered by each front-end.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFor {
    pub model: BaseModel,
    pub engine: TrainingEngine,
}

pub async fn list_base_models(engine: &Engine, who: &Requester) -> Result<Models, ApiError> {
    let span = who.span_tenant("ListBaseModels");
    async {
        let own = engine.base_models_of(&who.tenant).await?;
        let catalogue = engine.catalogue().base_models.clone();
        tracing::debug!(
            catalogue = catalogue.len(),
            own = own.len(),
            "base models listed"
        );
        Ok(Models { catalogue, own })
    }
    .instrument(span)
    .await
}

/// The request as the engine takes it; every bad field at once.
fn registration(r: pb::RegisterBaseModelRequest) -> Result<RegisterModel, Violations> {
    let mut v = Violations::default();
    let family = if r.family.is_empty() {
        None
    } else {
        model_family(&r.family)
            .map_err(|e| v.extend(e.nested("family")))
            .ok()
    };
    let engine = if r.engine.is_empty() {
        None
    } else {
        engine_name(&r.engine)
            .map_err(|e| v.extend(e.nested("engine")))
            .ok()
    };
    v.into_result(RegisterModel {
        name: r.name,
        uri: r.uri,
        label: r.label,
        family,
        engine,
        min_vram_gb: r.min_vram_gb,
    })
}

pub async fn register_base_model(
    engine: &Engine,
    who: &Requester,
    r: pb::RegisterBaseModelRequest,
) -> Result<CustomModel, ApiError> {
    let span = who.span_tenant("RegisterBaseModel");
    let request = registration(r)?;
    Ok(engine
        .register_base_model(&who.tenant, request)
        .instrument(span)
        .await?)
}

pub async fn delete_base_model(
    engine: &Engine,
    who: &Requester,
    name: &str,
) -> Result<(), ApiError> {
    Ok(engine
        .delete_base_model(&who.tenant, name)
        .instrument(who.span_tenant("DeleteBaseModel"))
        .await?)
}

/// An unknown model is a resource that does not exist; a known one the
/// engine cannot train is a bad combination of arguments. A model the
/// catalogue does not have may be one the tenant registered.
pub async fn parameter_schema(
    engine: &Engine,
    who: &Requester,
    r: &pb::GetParameterSchemaRequest,
) -> Result<SchemaFor, ApiError> {
    let (tenant, base_model, asked) = (&who.tenant, r.base_model.as_str(), r.engine.as_str());
    let span = match who.via {
        Via::Grpc => {
            tracing::info_span!("grpc", method = "GetParameterSchema", %tenant, base_model, engine = asked)
        }
        Via::Http => {
            tracing::info_span!("http", method = "GetParameterSchema", %tenant, base_model, engine = asked)
        }
    };
    async {
        let (model, training) = r.parse()?;
        let catalogue = engine.catalogue();
        let m = match catalogue.base_model(&model) {
            Some(m) => m.clone(),
            None => engine
                .base_models_of(&who.tenant)
                .await?
                .into_iter()
                .find(|m| m.name == model)
                .map(|m| m.as_base_model())
                .ok_or(ApiError::BaseModelNotFound(model))?,
        };
        if !m.supports(training) {
            let mut v = Violations::default();
            v.push(
                "engine",
                format!(
                    "engine {training} cannot train base model {}; it supports {}",
                    m.id,
                    m.engines
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return Err(v.into());
        }
        Ok(SchemaFor {
            model: m,
            engine: training,
        })
    }
    .instrument(span)
    .await
}
