//! `ListBaseModels`, `RegisterBaseModel` and `DeleteBaseModel`: the
//! catalogue's models and the calling tenant's own. The `JobService`
//! implementation in `jobs.rs` delegates here.

use loraflow_core::ids::TenantId;
use loraflow_core::validation::Violations;
use loraflow_proto::convert::catalogue::model_family;
use loraflow_proto::convert::spec::engine as engine_name;
use loraflow_proto::pb::v1 as pb;
use tonic::Status;

use super::status::to_status;
use crate::engine::{Engine, RegisterModel};

/// The catalogue's models, then the tenant's registered ones.
pub(super) async fn list(
    engine: &Engine,
    tenant: &TenantId,
) -> Result<pb::ListBaseModelsResponse, Status> {
    let mut base_models: Vec<pb::BaseModel> = engine
        .catalogue()
        .base_models
        .iter()
        .cloned()
        .map(Into::into)
        .collect();
    let own = engine
        .base_models_of(tenant)
        .await
        .map_err(|e| to_status(e, None))?;
    base_models.extend(own.into_iter().map(pb::BaseModel::from));
    tracing::debug!(count = base_models.len(), "base models listed");
    Ok(pb::ListBaseModelsResponse { base_models })
}

/// The request as the engine takes it; every bad field at once.
fn parse(r: pb::RegisterBaseModelRequest) -> Result<RegisterModel, Violations> {
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

pub(super) async fn register(
    engine: &Engine,
    tenant: &TenantId,
    r: pb::RegisterBaseModelRequest,
) -> Result<pb::BaseModel, Status> {
    let request = parse(r).map_err(|v| to_status(crate::Error::InvalidArgument(v), None))?;
    let model = engine
        .register_base_model(tenant, request)
        .await
        .map_err(|e| to_status(e, None))?;
    Ok(model.into())
}

pub(super) async fn delete(
    engine: &Engine,
    tenant: &TenantId,
    r: &pb::DeleteBaseModelRequest,
) -> Result<pb::DeleteBaseModelResponse, Status> {
    engine
        .delete_base_model(tenant, &r.name)
        .await
        .map_err(|e| to_status(e, None))?;
    Ok(pb::DeleteBaseModelResponse {})
}
