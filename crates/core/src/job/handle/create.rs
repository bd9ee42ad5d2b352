//! `create` and `submit`.

use super::Decision;
use crate::job::commands::{CreateJob, SubmitJob};
use crate::job::error::Error;
use crate::job::events::{JobCreated, JobEvent, JobSubmitted};
use crate::job::state::JobState;
use crate::validation::Violations;
use crate::workflow::standard_lora_with;

/// Refuse when the operator closed the service or blocked the model.
fn check_service(d: &Decision, model: &crate::ids::BaseModelId) -> Result<(), Error> {
    let status = d.services.status.get();
    let message = || {
        status
            .message
            .clone()
            .unwrap_or_else(|| "no reason given".to_owned())
    };
    if !status.available {
        return Err(Error::ServiceUnavailable { message: message() });
    }
    if status.blocked_models.contains(model) {
        return Err(Error::ModelBlocked {
            model: model.clone(),
            message: message(),
        });
    }
    Ok(())
}

pub(super) fn create(d: &mut Decision, c: CreateJob) -> Result<(), Error> {
    if let Some(job_id) = d.job.id() {
        return Err(Error::AlreadyExists {
            job_id: job_id.clone(),
        });
    }
    check_service(d, &c.spec.base_model)?;
    let mut violations = d.services.limits.check_spec(&c.spec);
    // A name the catalogue does not have may be one the tenant registered.
    let custom = match d.services.catalogue.base_model(&c.spec.base_model) {
        Some(_) => None,
        None => d
            .services
            .custom_models
            .get(&c.spec.tenant, &c.spec.base_model),
    };
    let params = c
        .spec
        .validate(&d.services.catalogue, custom.as_ref())
        .map_err(|v| {
            violations.extend(v);
        });
    if let Some(wf) = &c.spec.workflow
        && let Err(v) = wf.validate(&d.services.kinds)
    {
        violations.extend(v);
    }
    if c.job_id.as_str().trim().is_empty() {
        violations.push("job_id", "job id must not be empty");
    }
    let params = match params {
        Ok(p) if violations.is_empty() => p,
        _ => return Err(Error::InvalidSpec(violations)),
    };
    d.emit(JobEvent::JobCreated(JobCreated {
        job_id: c.job_id,
        spec: c.spec,
        params,
        created_at: d.now,
        custom_model: custom,
    }));
    Ok(())
}

pub(super) fn submit(d: &mut Decision, c: SubmitJob) -> Result<(), Error> {
    d.require(&[JobState::Pending])?;
    let spec = d.job.spec.clone().expect("a pending job has a spec");
    check_service(d, &spec.base_model)?;

    let status = d.services.status.get();
    let mut v = Violations::default();
    if c.dataset.image_count == 0 {
        v.push("dataset.image_count", "the dataset has no images");
    }
    if c.dataset.image_count > status.max_images {
        v.push(
            "dataset.image_count",
            format!(
                "the dataset has {} images; this service accepts at most {}",
                c.dataset.image_count, status.max_images
            ),
        );
    }
    if c.dataset.total_bytes > status.max_dataset_bytes {
        v.push(
            "dataset.total_bytes",
            format!(
                "the dataset is {} bytes; this service accepts at most {}",
                c.dataset.total_bytes, status.max_dataset_bytes
            ),
        );
    }
    if !v.is_empty() {
        return Err(Error::DatasetRefused(v));
    }

    let workflow = match spec.workflow.clone() {
        Some(w) => w,
        None => {
            let model = d.job.base_model(&d.services.catalogue).ok_or_else(|| {
                let mut v = Violations::default();
                v.push(
                    "base_model",
                    format!(
                        "base model {} is no longer in the catalogue",
                        spec.base_model
                    ),
                );
                Error::InvalidSpec(v)
            })?;
            standard_lora_with(&model, spec.engine, &d.services.template)
        }
    };
    workflow
        .validate(&d.services.kinds)
        .map_err(Error::InvalidWorkflow)?;
    d.emit(JobEvent::JobSubmitted(JobSubmitted {
        dataset: c.dataset,
        workflow,
        submitted_at: d.now,
    }));
    d.queue_ready();
    Ok(())
}
