//! Who may move which file: the rules of the transfer service, decided
//! from the job's own state (its events), never from what the caller says.
//!
//! - A tenant reads only artifacts its own jobs recorded, and writes only
//!   into its own `datasets/<tenant>/` (see `datasets.rs`).
//! - An executor acts only through a lease it holds now: it reads that
//!   step's dataset and input artifacts and writes only under
//!   `jobs/<job>/<step>/<attempt>/`.

use loraflow_core::artifact::Artifact;
use loraflow_core::executor::StepAssignment;
use loraflow_core::ids::{ExecutorId, JobId, LeaseId, TenantId};
use loraflow_core::job::TrainingJob;

use super::error::{Error, Result};
use crate::engine::Engine;

/// Who asks, once the token is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Who {
    Tenant(TenantId),
    Executor(ExecutorId),
    /// Any executor: a server without tokens.
    AnyExecutor,
}

impl Who {
    pub fn is_executor(&self) -> bool {
        !matches!(self, Self::Tenant(_))
    }
}

/// The longest id (job, lease, session) a request may carry.
pub const MAX_ID_BYTES: usize = 256;

pub(crate) fn check_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("{} bytes is over the limit of {MAX_ID_BYTES}", value.len()),
        ));
    }
    Ok(())
}

/// A relative file name: `/`-separated parts of at most 255 bytes, none of
/// them empty, `.` or `..`, no `\`, no control characters, at most
/// `max_bytes` in all.
pub(crate) fn check_name(field: &str, name: &str, max_bytes: usize) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(
            field,
            "required; give the file's relative name",
        ));
    }
    if name.len() > max_bytes {
        return Err(Error::invalid(
            field,
            format!("{} bytes is over the limit of {max_bytes}", name.len()),
        ));
    }
    for part in name.split('/') {
        let bad = part.is_empty()
            || part == "."
            || part == ".."
            || part.len() > 255
            || part.contains('\\')
            || part.chars().any(char::is_control)
            || part.starts_with(".incoming");
        if bad {
            return Err(Error::invalid(
                field,
                format!(
                    "{name:?} is not a relative file name: use `/`-separated parts of at most 255 bytes, none empty, `.` or `..`"
                ),
            ));
        }
    }
    Ok(())
}

/// A URI a caller names: no dot segments and no escapes, so a prefix check
/// means what it says.
pub(crate) fn check_uri(field: &str, uri: &str) -> Result<()> {
    if uri.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    if uri.len() > 4096 {
        return Err(Error::invalid(
            field,
            format!("{} bytes is over the limit of 4096", uri.len()),
        ));
    }
    let path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    if uri.contains('%') || uri.contains('\\') || path.split('/').any(|p| p == "." || p == "..") {
        return Err(Error::invalid(
            field,
            format!(
                "{uri:?} has `.`/`..` parts or escapes; name the artifact's URI as the job records it"
            ),
        ));
    }
    Ok(())
}

/// The assignment of the step `lease` holds, if `who` holds it now.
pub(crate) async fn leased_step(
    engine: &Engine,
    who: &Who,
    job: &str,
    lease: &str,
) -> Result<StepAssignment> {
    check_id("lease.job_id", job)?;
    check_id("lease.lease_id", lease)?;
    if !who.is_executor() {
        return Err(Error::Denied(
            "a tenant token cannot act for a step lease; use an executor token".into(),
        ));
    }
    let (job_id, lease_id) = (JobId::new(job), LeaseId::new(lease));
    let not_held = || {
        Error::Denied(format!(
            "lease {lease} of job {job} is not one this executor holds now"
        ))
    };
    let loaded = engine.store().load(&job_id).await?.ok_or_else(not_held)?;
    let assignment = loaded
        .job
        .assignment(&lease_id, engine.catalogue())
        .ok_or_else(not_held)?;
    if let Who::Executor(me) = who {
        let holder = loaded
            .job
            .find_lease(&lease_id)
            .map(|(_, _, a)| a.executor_id.clone());
        if holder.as_ref() != Some(me) {
            return Err(not_held());
        }
    }
    Ok(assignment)
}

/// The folders a step may list and read every file of: its dataset, and
/// the base model its tenant registered, if the job trains one.
fn step_folders(step: &StepAssignment) -> impl Iterator<Item = &str> {
    std::iter::once(step.dataset.uri.as_str()).chain(step.base_model_uri.as_deref())
}

/// Whether the step may read `uri`: a file of its dataset or of its
/// registered base model, or an artifact it was given.
pub(crate) fn step_may_read(step: &StepAssignment, uri: &str) -> bool {
    let in_folder = |root: &str| {
        let folder = format!("{}/", root.trim_end_matches('/'));
        uri.starts_with(&folder) || uri == root
    };
    if step_folders(step).any(in_folder) {
        return true;
    }
    step.inputs
        .iter()
        .chain(
            step.epochs
                .iter()
                .flat_map(|e| e.lora.iter().chain(e.samples.iter())),
        )
        .any(|a| a.uri == uri)
}

/// Whether `uri` is a folder the step may list: its dataset, or its
/// registered base model.
pub(crate) fn is_step_folder(step: &StepAssignment, uri: &str) -> bool {
    step_folders(step).any(|f| uri.trim_end_matches('/') == f.trim_end_matches('/'))
}

/// The folder (relative to the artifact root) a step attempt writes into.
pub(crate) fn step_output_dir(step: &StepAssignment) -> String {
    format!("jobs/{}/{}/{}", step.job_id, step.step_id, step.attempt)
}

/// `tenant`'s job `job`, or `Denied` (the same answer for a job that does
/// not exist, so a tenant learns nothing of others' jobs).
pub(crate) async fn tenant_job(
    engine: &Engine,
    tenant: &TenantId,
    job: &str,
) -> Result<TrainingJob> {
    check_id("lease.job_id", job)?;
    let denied = || Error::Denied(format!("job {job} is not one of tenant {tenant}'s jobs"));
    let loaded = engine
        .store()
        .load(&JobId::new(job))
        .await?
        .ok_or_else(denied)?;
    match loaded.job.spec() {
        Some(spec) if &spec.tenant == tenant => Ok(loaded.job),
        _ => Err(denied()),
    }
}

/// Every artifact a job recorded: its steps', its epochs', its published LoRA.
pub(crate) fn job_artifacts(job: &TrainingJob) -> impl Iterator<Item = &Artifact> {
    job.steps()
        .values()
        .flat_map(|s| s.artifacts.iter())
        .chain(
            job.epochs()
                .values()
                .flat_map(|e| e.lora.iter().chain(e.samples.iter())),
        )
        .chain(job.published())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_folder() {
        for ok in ["a.png", "sub/b.txt", "epoch-3.safetensors"] {
            check_name("name", ok, 1024).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            "a\\b",
            ".",
            "a/.",
            ".incoming/x",
        ] {
            let err = check_name("name", bad, 1024).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { ref field, .. } if field == "name"),
                "{bad:?}"
            );
        }
        assert!(check_name("name", &"a".repeat(30), 20).is_err());
    }

    #[test]
    fn uris_with_dot_segments_or_escapes_are_refused() {
        check_uri("uri", "file:///srv/a/datasets/acme/x/a.png").unwrap();
        for bad in [
            "",
            "file:///srv/a/datasets/acme/../other/a.png",
            "file:///srv/a/./b",
            "file:///srv/a/%2e%2e/b",
        ] {
            assert!(check_uri("uri", bad).is_err(), "{bad:?}");
        }
    }
}
