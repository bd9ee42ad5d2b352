//! Verifying a job's log for its tenant: the hash chain, the head and every
//! signature, as `loraflow audit verify` does (see `docs/audit.md`).

use serde::Serialize;
use tracing::Instrument;

use super::{ApiError, Requester};
use crate::engine::Engine;

/// What verifying one job's log found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub job_id: String,
    /// Every event signed, chained and readable, and the head matches.
    pub intact: bool,
    /// How many events the log holds.
    pub events: u64,
    /// Why not intact: the first bad position and what is wrong there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

pub async fn verify_job(
    engine: &Engine,
    who: &Requester,
    job_id: &str,
) -> Result<Verification, ApiError> {
    let id = loraflow_proto::aip::job_id(job_id).map_err(|v| ApiError::from(v.nested("job_id")))?;
    async {
        // Only the tenant's own jobs (NOT_FOUND otherwise, as everywhere).
        engine.history(&who.tenant, &id).await?;
        let audit = crate::audit::audit_job(engine.store(), &id)
            .await
            .map_err(crate::Error::from)?
            .ok_or_else(|| crate::Error::JobNotFound(id.clone()))?;
        Ok::<_, ApiError>(Verification {
            job_id: id.to_string(),
            intact: audit.is_intact(),
            events: audit.report.events,
            verdict: audit.verdict(),
        })
    }
    .instrument(who.span("VerifyJob", Some(id.as_str())))
    .await
}
