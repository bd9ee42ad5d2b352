//! What a tenant may see of the fleet (`ListExecutors`): every connected
//! executor with its capabilities and times, the steps of the tenant's own
//! jobs it holds, and only a count of the steps it holds for other tenants,
//! so that job ids of other tenants cannot be learnt from it.

use loraflow_core::ids::{ExecutorId, TenantId};
use loraflow_core::validation::Violations;

use super::{Engine, FleetMember};
use crate::error::{Error, Result};

/// Page size when the caller gives 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: usize = 500;
/// The longest page token accepted (twice the longest executor id, hex).
pub const MAX_PAGE_TOKEN_CHARS: usize = 1024;

/// One executor as a tenant sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetEntry {
    /// `member.leases` holds the steps of the tenant's own jobs only.
    pub member: FleetMember,
    /// Steps of other tenants' jobs it holds now.
    pub other_tenants_leases: u32,
}

/// A page of the fleet, by executor id.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPage {
    pub executors: Vec<FleetEntry>,
    /// Pass it back for the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

fn encode(last: &ExecutorId) -> String {
    hex::encode(last.as_str())
}

fn decode(token: &str) -> Result<ExecutorId> {
    let bad = |why: &str| {
        let mut v = Violations::default();
        v.push(
            "page_token",
            format!(
                "page token {:?} {why}; start again without it",
                token.chars().take(64).collect::<String>()
            ),
        );
        Error::InvalidArgument(v)
    };
    if token.len() > MAX_PAGE_TOKEN_CHARS {
        return Err(bad(&format!(
            "is {} characters long, over the limit of {MAX_PAGE_TOKEN_CHARS}",
            token.len()
        )));
    }
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .map(ExecutorId::new)
        .ok_or_else(|| bad("is not one this list returned"))
}

impl Engine {
    /// Every executor registered with this engine process, every tenant's
    /// leases included (for metrics, not for clients).
    pub(crate) fn fleet_members(&self) -> Vec<FleetMember> {
        self.inner.fleet.members()
    }

    /// The scheduler's place in the feed and the leases it holds live
    /// (for metrics).
    pub(crate) fn scheduler_figures(&self) -> (u64, usize) {
        self.inner
            .scheduler
            .read(|s| (s.position(), s.leases().count()))
    }

    /// The webhook attempts this process made since it started (for metrics).
    pub(crate) fn webhook_counts(&self) -> crate::webhooks::WebhookCounts {
        self.inner.webhooks.counts()
    }

    /// The executors registered with this engine process, by id, as
    /// `tenant` may see them. `page_size` 0 is 50, above 500 is 500.
    pub fn list_executors(
        &self,
        tenant: &TenantId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<FleetPage> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = page_token
            .filter(|t| !t.is_empty())
            .map(decode)
            .transpose()?;
        let mut members: Vec<FleetMember> = self
            .inner
            .fleet
            .members()
            .into_iter()
            .filter(|m| after.as_ref().is_none_or(|a| &m.executor_id > a))
            .collect();
        let next_page_token = if members.len() > size {
            members.truncate(size);
            members.last().map(|m| encode(&m.executor_id))
        } else {
            None
        };
        let executors = self.inner.scheduler.read(|s| {
            members
                .into_iter()
                .map(|mut member| {
                    let mut other = 0u32;
                    member.leases.clear();
                    for l in s.leases().filter(|l| l.executor_id == member.executor_id) {
                        if &l.tenant == tenant {
                            member.leases.push((l.job_id.clone(), l.step_id.clone()));
                        } else {
                            other += 1;
                        }
                    }
                    member.leases.sort();
                    FleetEntry {
                        member,
                        other_tenants_leases: other,
                    }
                })
                .collect()
        });
        Ok(FleetPage {
            executors,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_bad_ones_name_the_field() {
        let id = ExecutorId::new("gpu-1");
        assert_eq!(decode(&encode(&id)).unwrap(), id);
        for bad in ["zz", "", &"ab".repeat(600)] {
            match decode(bad) {
                Err(Error::InvalidArgument(v)) => {
                    assert!(format!("{v:?}").contains("page_token"), "{v:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
