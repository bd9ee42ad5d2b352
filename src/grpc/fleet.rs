//! `ListExecutors`: the fleet as the calling tenant may see it. The
//! `JobService` implementation in `jobs.rs` delegates here.

use loraflow_core::ids::TenantId;
use loraflow_proto::convert::time::timestamp;
use loraflow_proto::pb::v1 as pb;
use tonic::Status;

use super::status::to_status;
use crate::engine::{Engine, FleetEntry};

fn entry_to_wire(e: FleetEntry) -> pb::ExecutorInfo {
    let m = e.member;
    pb::ExecutorInfo {
        executor_id: m.executor_id.to_string(),
        instance_id: m.instance.map(|i| i.to_string()).unwrap_or_default(),
        capabilities: Some(m.capabilities.into()),
        register_time: Some(timestamp(m.registered_at)),
        last_seen_time: Some(timestamp(m.last_seen)),
        leases: m
            .leases
            .into_iter()
            .map(|(job, step)| pb::ExecutorLease {
                job_id: job.to_string(),
                step_id: step.to_string(),
            })
            .collect(),
        other_tenants_leases: e.other_tenants_leases,
    }
}

/// Check the request's fields, read the fleet, answer.
pub(super) fn list_executors(
    engine: &Engine,
    tenant: &TenantId,
    r: &pb::ListExecutorsRequest,
) -> Result<pb::ListExecutorsResponse, Status> {
    let page_size = loraflow_proto::aip::page_size(r.page_size)
        .map_err(|v| to_status(crate::Error::InvalidArgument(v.nested("page_size")), None))?;
    let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
    let page = engine
        .list_executors(tenant, page_size, token)
        .map_err(|e| to_status(e, None))?;
    tracing::debug!(count = page.executors.len(), "executors listed");
    Ok(pb::ListExecutorsResponse {
        executors: page.executors.into_iter().map(entry_to_wire).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    })
}
