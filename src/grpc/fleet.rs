//! `ListExecutors`: the fleet as the calling tenant may see it, on the wire.

use loraflow_proto::convert::time::timestamp;
use loraflow_proto::pb::v1 as pb;

use crate::engine::{FleetEntry, FleetPage};

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

/// A page of the fleet on the wire.
pub(super) fn executors_to_wire(page: FleetPage) -> pb::ListExecutorsResponse {
    pb::ListExecutorsResponse {
        executors: page.executors.into_iter().map(entry_to_wire).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }
}
