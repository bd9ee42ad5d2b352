//! The job API: what clients do with jobs. Every call is scoped to a tenant;
//! another tenant's job is reported as not found, so ids never leak.

use std::time::Duration;

use futures::Stream;
use loraflow_core::catalogue::{Catalogue, ServiceStatus};
use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::job::{
    ApproveJob, CancelJob, CreateJob, JobCommand, JobSpec, JobState, RejectJob, SubmitJob,
    TrainingJob,
};
use loraflow_core::views::{JobListFilter, JobStatus};
use loraflow_store::{FeedFilter, JobListQuery, JobPage, LoadedJob, Metadata, StoredEvent};
use uuid::Uuid;

use super::Engine;
use crate::error::{Error, Result};

/// A request for a new job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub spec: JobSpec,
    /// Makes the call idempotent: a repeat returns the job the first call made.
    pub request_id: Option<String>,
}

/// A job as clients see it: its status view, plus what only the live
/// scheduler knows (queue position, estimated time left).
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub status: JobStatus,
    /// 0 = next to be leased, among all queued steps.
    pub queue_position: Option<usize>,
    /// Time left in the running step, from its measured pace.
    pub eta: Option<Duration>,
}

/// Ids of jobs created with a request id are derived from it, so that a
/// repeated request finds the first job instead of making a second.
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x6c6f_7261_666c_6f77_2d72_6571_7565_7374);

fn metadata(tenant: &TenantId, actor: &str) -> Metadata {
    Metadata::from([
        ("tenant".to_owned(), tenant.to_string()),
        ("actor".to_owned(), actor.to_owned()),
    ])
}

impl Engine {
    pub fn catalogue(&self) -> &Catalogue {
        &self.inner.services.catalogue
    }

    pub fn service_status(&self) -> ServiceStatus {
        self.inner.services.status.get()
    }

    /// Change what the service accepts (close it, block a model, limits).
    pub fn set_service_status(&self, status: ServiceStatus) {
        self.inner.services.status.set(status);
    }

    /// Create a job and submit it: the dataset is listed and checked first,
    /// so a bad one is refused with nothing written.
    pub async fn create_job(&self, tenant: &TenantId, new: NewJob) -> Result<JobView> {
        let job_id = match &new.request_id {
            Some(r) => JobId::new(
                Uuid::new_v5(&REQUEST_NAMESPACE, format!("{tenant}/{r}").as_bytes()).to_string(),
            ),
            None => JobId::new(Uuid::now_v7().to_string()),
        };
        if new.request_id.is_some() && self.owned(tenant, &job_id).await.is_ok() {
            return self.get_job_after(tenant, &job_id).await;
        }
        let mut spec = new.spec;
        spec.tenant = tenant.clone();
        let create = JobCommand::Create(CreateJob {
            job_id: job_id.clone(),
            spec: spec.clone(),
        });
        // Check the spec (a dry run of the decision, nothing written) and the
        // dataset together, so a client learns every problem at once and a
        // refused request leaves no trace.
        let mut violations = loraflow_core::validation::Violations::default();
        match TrainingJob::default().decide(create.clone(), &self.inner.services) {
            Ok(_) => {}
            Err(loraflow_core::job::Error::InvalidSpec(v)) => violations.extend(v),
            Err(e) => return Err(e.into()),
        }
        violations.extend(self.inner.webhooks.check(tenant, &spec));
        let status = self.service_status();
        let dataset =
            match crate::admission::admit(&self.inner.artifacts, &spec.dataset, &status).await {
                Ok(d) => Some(d),
                Err(v) => {
                    violations.extend(v);
                    None
                }
            };
        let Some(dataset) = dataset.filter(|_| violations.is_empty()) else {
            return Err(Error::InvalidArgument(violations));
        };
        let meta = metadata(tenant, tenant.as_str());
        match self
            .inner
            .store
            .execute(&job_id, create, meta.clone())
            .await
        {
            // A concurrent repeat of the same request won the race.
            Err(loraflow_store::Error::Domain(loraflow_core::job::Error::AlreadyExists {
                ..
            })) if new.request_id.is_some() => {
                return self.get_job_after(tenant, &job_id).await;
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let c = self
            .inner
            .store
            .execute(&job_id, JobCommand::Submit(SubmitJob { dataset }), meta)
            .await?;
        if let Some(p) = c.position {
            self.inner.store.wait_for(p).await?;
        }
        self.get_job(tenant, &job_id).await
    }

    /// The job, once the views include everything written to it so far.
    async fn get_job_after(&self, tenant: &TenantId, job: &JobId) -> Result<JobView> {
        if let Some(last) = self.inner.store.history(job).await?.last() {
            self.inner.store.wait_for(last.position).await?;
        }
        self.get_job(tenant, job).await
    }

    /// Load a job the tenant owns, or `JobNotFound`.
    pub(crate) async fn owned(&self, tenant: &TenantId, job: &JobId) -> Result<LoadedJob> {
        match self.inner.store.load(job).await? {
            Some(l) if l.job.spec().is_some_and(|s| &s.tenant == tenant) => Ok(l),
            _ => Err(Error::JobNotFound(job.clone())),
        }
    }

    pub async fn get_job(&self, tenant: &TenantId, job: &JobId) -> Result<JobView> {
        match self.inner.store.views().job_status(job).await? {
            Some(status) if &status.tenant == tenant => Ok(self.view(status)),
            _ => Err(Error::JobNotFound(job.clone())),
        }
    }

    fn view(&self, status: JobStatus) -> JobView {
        let job = status.job_id.clone();
        let (queue_position, running) = self.inner.scheduler.read(|s| {
            let position = s.ordered_queue().iter().position(|q| q.job_id == job);
            let running: Vec<_> = s
                .leases()
                .filter(|l| l.job_id == job)
                .map(|l| (l.lease_id.clone(), l.step_id.clone()))
                .collect();
            (position, running)
        });
        let eta = running.iter().find_map(|(lease, step)| {
            let total = status.step(step)?.progress.as_ref()?.total_steps?;
            self.eta(lease, total)
        });
        JobView {
            status,
            queue_position,
            eta,
        }
    }

    /// A tenant's jobs, newest first.
    pub async fn list_jobs(
        &self,
        tenant: &TenantId,
        mut filter: JobListFilter,
        page_size: u32,
        page_token: Option<String>,
    ) -> Result<JobPage> {
        filter.tenant = Some(tenant.clone());
        Ok(self
            .inner
            .store
            .views()
            .list_jobs(&JobListQuery {
                filter,
                page_size,
                page_token,
            })
            .await?)
    }

    /// The job's events after position `after`, then each new one as it is
    /// written. A client that reconnects with the last position it saw misses
    /// nothing.
    pub async fn watch(
        &self,
        tenant: &TenantId,
        job: &JobId,
        after: u64,
    ) -> Result<impl Stream<Item = loraflow_store::Result<StoredEvent>> + Send + 'static> {
        self.owned(tenant, job).await?;
        Ok(self
            .inner
            .store
            .feed()
            .subscribe(after, FeedFilter::job(job.clone())))
    }

    /// The job's stored events, oldest first.
    pub async fn history(&self, tenant: &TenantId, job: &JobId) -> Result<Vec<StoredEvent>> {
        self.owned(tenant, job).await?;
        Ok(self.inner.store.history(job).await?)
    }

    /// Run a client command against a job the tenant owns; with an etag, only
    /// if the job is still at that version.
    async fn command(
        &self,
        tenant: &TenantId,
        job: &JobId,
        etag: Option<u64>,
        actor: &str,
        command: JobCommand,
    ) -> Result<JobView> {
        self.owned(tenant, job).await?;
        let meta = metadata(tenant, actor);
        let store = &self.inner.store;
        let c = match etag {
            Some(etag) => store.execute_expecting(job, etag, command, meta).await?,
            None => store.execute(job, command, meta).await?,
        };
        match c.position {
            Some(p) => {
                store.wait_for(p).await?;
                self.get_job(tenant, job).await
            }
            None => self.get_job_after(tenant, job).await,
        }
    }

    pub async fn cancel(
        &self,
        tenant: &TenantId,
        job: &JobId,
        reason: &str,
        by: &str,
        etag: Option<u64>,
    ) -> Result<JobView> {
        let cmd = JobCommand::Cancel(CancelJob {
            reason: reason.to_owned(),
            cancelled_by: by.to_owned(),
        });
        self.command(tenant, job, etag, by, cmd).await
    }

    pub async fn approve(
        &self,
        tenant: &TenantId,
        job: &JobId,
        epoch: u32,
        by: &str,
        etag: Option<u64>,
    ) -> Result<JobView> {
        let cmd = JobCommand::Approve(ApproveJob {
            epoch,
            approved_by: by.to_owned(),
        });
        self.command(tenant, job, etag, by, cmd).await
    }

    pub async fn reject(
        &self,
        tenant: &TenantId,
        job: &JobId,
        reason: &str,
        by: &str,
        etag: Option<u64>,
    ) -> Result<JobView> {
        let cmd = JobCommand::Reject(RejectJob {
            reason: reason.to_owned(),
            rejected_by: by.to_owned(),
        });
        self.command(tenant, job, etag, by, cmd).await
    }

    /// Start a failed job again, as a new job with the same spec (labelled
    /// `retry_of`). A failed job itself never changes again.
    pub async fn retry(
        &self,
        tenant: &TenantId,
        job: &JobId,
        request_id: Option<String>,
    ) -> Result<JobView> {
        let loaded = self.owned(tenant, job).await?;
        let state = loaded.job.state().expect("an owned job exists");
        if state != JobState::Failed {
            return Err(Error::WrongState {
                action: "retry",
                state,
            });
        }
        let mut spec = loaded.job.spec().expect("an owned job has a spec").clone();
        spec.labels.insert("retry_of".into(), job.to_string());
        self.create_job(tenant, NewJob { spec, request_id }).await
    }

    /// Ask the job's running training step to save a checkpoint now.
    pub async fn request_save(&self, tenant: &TenantId, job: &JobId) -> Result<()> {
        self.owned(tenant, job).await?;
        self.inner
            .signals
            .lock()
            .expect("signals lock poisoned")
            .entry(job.clone())
            .or_default()
            .save_now = true;
        Ok(())
    }

    /// Ask the job's running training step to render samples now.
    pub async fn request_sample(&self, tenant: &TenantId, job: &JobId) -> Result<()> {
        self.owned(tenant, job).await?;
        self.inner
            .signals
            .lock()
            .expect("signals lock poisoned")
            .entry(job.clone())
            .or_default()
            .sample_now = true;
        Ok(())
    }
}
