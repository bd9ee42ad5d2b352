//! The job API: what clients do with jobs. Every call is scoped to a tenant;
//! another tenant's job is reported as not found, so ids never leak.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use loraflow_core::catalogue::{Catalogue, ServiceStatus};
use loraflow_core::ids::{JobId, StepId, TenantId};
use loraflow_core::job::{
    ApproveJob, CancelJob, CreateJob, JobCommand, JobSpec, JobState, RejectJob, SubmitJob,
    TrainingJob,
};
use loraflow_core::sampling::SampleOverrides;
use loraflow_core::schedule::Unservable;
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
    /// Queued steps no connected executor could run, with what is missing
    /// (`waiting for an executor with engine=kohya and gpu; none
    /// connected`). A step whose executors are only busy is not here.
    pub waiting_for: BTreeMap<StepId, Unservable>,
}

/// Ids of jobs created with a request id are derived from it, so that a
/// repeated request finds the first job instead of making a second.
/// The longest a read waits for the views to catch up.
const VIEWS_WAIT: Duration = Duration::from_secs(1);

const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x6c6f_7261_666c_6f77_2d72_6571_7565_7374);

/// Retries derive their ids in a namespace of their own, from the failed job
/// and the request id: a request id a client also used for a `create_job`
/// (or for retrying another job) names another job.
const RETRY_NAMESPACE: Uuid = Uuid::from_u128(0x6c6f_7261_666c_6f77_2d72_6574_7279_0001);

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

    /// Where `tenant`'s dataset uploads go (`<artifacts>/datasets/<tenant>/`),
    /// the namespace its jobs may always name; see [`crate::tenancy`].
    pub fn dataset_root(&self, tenant: &TenantId) -> Option<String> {
        self.inner.tenancy.uploads_uri(tenant)
    }

    /// Change what the service accepts (close it, block a model, limits).
    pub fn set_service_status(&self, status: ServiceStatus) {
        self.inner.services.status.set(status);
    }

    /// The id [`create_job`](Self::create_job) gives the job that `tenant`
    /// creates with `request_id`: the same for every repeat of the request.
    pub fn job_id_for_request(tenant: &TenantId, request_id: &str) -> JobId {
        JobId::new(
            Uuid::new_v5(
                &REQUEST_NAMESPACE,
                format!("{tenant}/{request_id}").as_bytes(),
            )
            .to_string(),
        )
    }

    /// The id [`retry`](Self::retry) gives the job that retries `job` under
    /// `request_id`.
    pub fn retry_job_id(tenant: &TenantId, job: &JobId, request_id: &str) -> JobId {
        JobId::new(
            Uuid::new_v5(
                &RETRY_NAMESPACE,
                format!("{tenant}/{job}/{request_id}").as_bytes(),
            )
            .to_string(),
        )
    }

    /// Create a job and submit it: the dataset is listed and checked first,
    /// so a bad one is refused with nothing written. With a request id, a
    /// repeat returns the job the first call made, and finishes its
    /// submission if that call stopped between the two writes.
    ///
    /// Every URI of the spec must be one the tenant may name (see
    /// [`crate::tenancy`]); that is checked before anything is listed, and a
    /// refusal is [`Error::PermissionDenied`]. Every input is checked
    /// against the engine's [`Limits`](loraflow_core::limits::Limits).
    pub async fn create_job(&self, tenant: &TenantId, new: NewJob) -> Result<JobView> {
        match &new.request_id {
            Some(r) => {
                let v = self.services().limits.check_request_id(r);
                if !v.is_empty() {
                    return Err(Error::InvalidArgument(v));
                }
                let id = Self::job_id_for_request(tenant, r);
                self.create_as(tenant, id, new.spec, true, "job").await
            }
            None => {
                let id = JobId::new(Uuid::now_v7().to_string());
                self.create_as(tenant, id, new.spec, false, "job").await
            }
        }
    }

    /// Finish the [`create_job`](Self::create_job) that `tenant` made with
    /// `request_id`, whose answer was lost: the job it created, submitted
    /// now if that call stopped before admitting the dataset. Creates
    /// nothing; `UnknownRequest` when no job was created with the id.
    pub async fn resume_request(&self, tenant: &TenantId, request_id: &str) -> Result<JobView> {
        let id = Self::job_id_for_request(tenant, request_id);
        tracing::Span::current().record("job", tracing::field::display(&id));
        match self.owned(tenant, &id).await {
            Ok(existing) => self.resume(tenant, &id, existing).await,
            Err(Error::JobNotFound(_)) => Err(Error::UnknownRequest(request_id.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Check a new job as [`create_job`](Self::create_job) would, every
    /// check but the dataset listing (the dataset may not be uploaded
    /// yet), and write nothing: AIP-163's `validate_only`. A client uploads
    /// its dataset only once this passes, so a refused submit leaves no
    /// upload behind.
    pub async fn validate_job(&self, tenant: &TenantId, new: &NewJob) -> Result<()> {
        if let Some(r) = &new.request_id {
            let v = self.services().limits.check_request_id(r);
            if !v.is_empty() {
                return Err(Error::InvalidArgument(v));
            }
        }
        let mut spec = new.spec.clone();
        spec.tenant = tenant.clone();
        self.refresh_base_models(tenant).await?;
        self.check_uris(tenant, &spec)?;
        let violations = self.check_spec(tenant, &JobId::new("validate-only"), &spec)?;
        violations.into_result(()).map_err(Error::InvalidArgument)
    }

    /// Every URI the spec carries must be one the tenant may name. Runs
    /// before anything is listed or read: a refusal reads no directory.
    /// (Webhook URLs are not read from: they are checked as URLs, with the
    /// other webhook rules.)
    fn check_uris(&self, tenant: &TenantId, spec: &JobSpec) -> Result<()> {
        use crate::tenancy::Refusal;
        self.check_model_uri(tenant, &spec.base_model)?;
        let mut denied = loraflow_core::validation::Violations::default();
        let mut invalid = loraflow_core::validation::Violations::default();
        match self.inner.tenancy.check(tenant, &spec.dataset.uri) {
            Ok(()) => {}
            Err(Refusal::Denied(m)) => denied.push("dataset.uri", m),
            Err(Refusal::Invalid(m)) => invalid.push("dataset.uri", m),
        }
        if !denied.is_empty() {
            tracing::warn!(%tenant, uri = %loraflow_core::limits::quote(&spec.dataset.uri), "a dataset URI outside the tenant's roots was refused");
            return Err(Error::PermissionDenied(denied));
        }
        invalid.into_result(()).map_err(Error::InvalidArgument)
    }

    /// The spec's problems (a dry run of the create decision, limits
    /// included, and the webhook rules); nothing is written.
    fn check_spec(
        &self,
        tenant: &TenantId,
        job_id: &JobId,
        spec: &JobSpec,
    ) -> Result<loraflow_core::validation::Violations> {
        let create = JobCommand::Create(CreateJob {
            job_id: job_id.clone(),
            spec: spec.clone(),
        });
        let mut violations = loraflow_core::validation::Violations::default();
        match TrainingJob::default().decide(create, &self.inner.services) {
            Ok(_) => {}
            Err(loraflow_core::job::Error::InvalidSpec(v)) => violations.extend(v),
            Err(e) => return Err(e.into()),
        }
        violations.extend(self.inner.webhooks.check(tenant, spec));
        Ok(violations)
    }

    /// Create and submit job `job_id`. `repeatable`: the id comes from a
    /// request id, so an existing job under it is this request's. The id is
    /// recorded as `span_field` of the caller's span (the gRPC layer's span
    /// declares it empty: the id is only known here).
    async fn create_as(
        &self,
        tenant: &TenantId,
        job_id: JobId,
        mut spec: JobSpec,
        repeatable: bool,
        span_field: &'static str,
    ) -> Result<JobView> {
        tracing::Span::current().record(span_field, tracing::field::display(&job_id));
        if repeatable && let Ok(existing) = self.owned(tenant, &job_id).await {
            return self.resume(tenant, &job_id, existing).await;
        }
        spec.tenant = tenant.clone();
        // The tenant's registered models as the store holds them now: the
        // create decision reads them.
        self.refresh_base_models(tenant).await?;
        // The URIs first: a dataset the tenant may not name is never listed.
        self.check_uris(tenant, &spec)?;
        // Check the spec (a dry run of the decision, nothing written) and the
        // dataset together, so a client learns every problem at once and a
        // refused request leaves no trace.
        let mut violations = self.check_spec(tenant, &job_id, &spec)?;
        let create = JobCommand::Create(CreateJob {
            job_id: job_id.clone(),
            spec: spec.clone(),
        });
        let status = self.service_status();
        let limits = self.services().limits.clone();
        // An over-long URI is not listed (nor quoted back whole).
        let uri_ok = !violations.iter().any(|v| v.field == "dataset.uri");
        let admitted = if uri_ok {
            crate::admission::admit(&self.inner.artifacts, &spec.dataset, &status, &limits).await
        } else {
            Err(Default::default())
        };
        let dataset = match admitted {
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
        // Created and submitted in one commit: a crash leaves no job, or a
        // submitted one.
        let submit = JobCommand::Submit(SubmitJob { dataset });
        let committed = match self
            .inner
            .store
            .execute_all(&job_id, vec![create, submit], meta)
            .await
        {
            // A concurrent repeat of the same request won the race.
            Err(loraflow_store::Error::Domain(loraflow_core::job::Error::AlreadyExists {
                ..
            })) if repeatable => {
                let existing = self.owned(tenant, &job_id).await?;
                return self.resume(tenant, &job_id, existing).await;
            }
            Err(e) => return Err(e.into()),
            Ok(c) => c,
        };
        // A test hook (docs/liveness.md): with `FAILPOINTS` set to
        // `create-job-after-commit=return` the process dies here, after the
        // job's commit and before its answer, as a crash would.
        fail::fail_point!("create-job-after-commit", |_| std::process::abort());
        // The views show the job once they reach its submission; what
        // other callers wrote meanwhile need not be waited for.
        if let Some(p) = committed.position {
            self.inner.store.wait_for(p).await?;
        }
        self.job_as_viewed(tenant, &job_id).await
    }

    /// Submit a job left `Pending` (by a release that created and
    /// submitted in two commits, or by a `Create` through the store's
    /// API): `Pending` to `Submitted`.
    async fn submit_created(
        &self,
        tenant: &TenantId,
        job_id: &JobId,
        dataset: loraflow_core::job::AdmittedDataset,
    ) -> Result<JobView> {
        let meta = metadata(tenant, tenant.as_str());
        let submit = JobCommand::Submit(SubmitJob { dataset });
        match self.inner.store.execute(job_id, submit, meta).await {
            Ok(c) => {
                // The views show the job once they reach its submission;
                // what other callers wrote meanwhile need not be waited for.
                if let Some(p) = c.position {
                    self.inner.store.wait_for(p).await?;
                }
                self.job_as_viewed(tenant, job_id).await
            }
            // A repeat of the request submitted it meanwhile (or a client
            // cancelled it): the job is past Pending either way.
            Err(loraflow_store::Error::Domain(loraflow_core::job::Error::IllegalTransition {
                command: "submit",
                ..
            })) => self.get_job_after(tenant, job_id).await,
            Err(e) => Err(e.into()),
        }
    }

    /// A repeated request found its job. If the first call stopped (a crash,
    /// a lost connection) after creating the job and before submitting it,
    /// the job is still `Pending`: admit its dataset and submit it now, so
    /// the repeat ends where the first call would have. A dataset that can
    /// no longer be admitted is `InvalidArgument`, and the job stays
    /// `Pending` (a later repeat tries again; a cancel ends it).
    async fn resume(
        &self,
        tenant: &TenantId,
        job_id: &JobId,
        existing: LoadedJob,
    ) -> Result<JobView> {
        if existing.job.state() != Some(JobState::Pending) {
            return self.get_job_after(tenant, job_id).await;
        }
        let spec = existing.job.spec().expect("a created job has a spec");
        // The operator may have narrowed the tenant's roots since.
        self.check_uris(tenant, spec)?;
        let status = self.service_status();
        let limits = self.services().limits.clone();
        let dataset =
            crate::admission::admit(&self.inner.artifacts, &spec.dataset, &status, &limits)
                .await
                .map_err(Error::InvalidArgument)?;
        tracing::info!(job = %job_id, "a repeated request resumes the submission of its job");
        self.submit_created(tenant, job_id, dataset).await
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

    /// Let the views reach every event committed before now, so that a read
    /// includes what its caller just did or just saw on a watch stream. They
    /// usually lag by milliseconds; past a second (a projection runner that
    /// is down or far behind) the read answers with what they hold.
    async fn fresh_views(&self) -> Result<()> {
        let store = &self.inner.store;
        let head = store.feed().head().await?;
        match store.wait_for_timeout(head, VIEWS_WAIT).await {
            Ok(()) | Err(loraflow_store::Error::Timeout { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_job(&self, tenant: &TenantId, job: &JobId) -> Result<JobView> {
        self.fresh_views().await?;
        self.job_as_viewed(tenant, job).await
    }

    /// The job as the views hold it now (the caller has let them catch up).
    async fn job_as_viewed(&self, tenant: &TenantId, job: &JobId) -> Result<JobView> {
        match self.inner.store.views().job_status(job).await? {
            Some(status) if &status.tenant == tenant => {
                // Queue position and ETA come from the scheduler, which
                // follows the feed on its own: let it see the job's events too.
                self.inner
                    .scheduler
                    .wait_for(status.last_position, VIEWS_WAIT)
                    .await;
                Ok(self.view(status))
            }
            _ => Err(Error::JobNotFound(job.clone())),
        }
    }

    fn view(&self, status: JobStatus) -> JobView {
        let job = status.job_id.clone();
        let scheduler = &self.inner.scheduler;
        let connected =
            scheduler.connected(&self.inner.fleet, self.inner.config.connected_within());
        let (queue_position, running, waiting_for) = scheduler.read(|s| {
            let position = s.queue_place(&job);
            let running: Vec<_> = s
                .leases()
                .filter(|l| l.job_id == job)
                .map(|l| (l.lease_id.clone(), l.step_id.clone()))
                .collect();
            let waiting_for = s
                .queued()
                .filter(|q| q.job_id == job)
                .filter_map(|q| Some((q.step_id.clone(), q.unservable(&connected)?)))
                .collect();
            (position, running, waiting_for)
        });
        let eta = running.iter().find_map(|(lease, step)| {
            let total = status.step(step)?.progress.as_ref()?.total_steps?;
            self.eta(lease, total)
        });
        JobView {
            status,
            queue_position,
            eta,
            waiting_for,
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
        self.fresh_views().await?;
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
    /// nothing. The stream ends after the job's last event (the one that
    /// makes it Published or Failed), so a follower learns that the job is
    /// over; it is empty when the job was over before `after`.
    pub async fn watch(
        &self,
        tenant: &TenantId,
        job: &JobId,
        after: u64,
    ) -> Result<impl Stream<Item = loraflow_store::Result<StoredEvent>> + Send + 'static> {
        let loaded = self.owned(tenant, job).await?;
        // A finished job writes nothing more: waiting past its last event
        // would wait forever. Its position comes from the job's own log,
        // which (unlike the feed on PostgreSQL) never lags behind a commit.
        let over_before = loaded.job.is_terminal()
            && self
                .inner
                .store
                .history(job)
                .await?
                .last()
                .is_some_and(|last| last.position <= after);
        let feed = Box::pin(
            self.inner
                .store
                .feed()
                .subscribe(after, FeedFilter::job(job.clone())),
        );
        Ok(futures::stream::unfold(
            (feed, over_before),
            |(mut feed, over)| async move {
                if over {
                    return None;
                }
                let item = feed.next().await?;
                let ends = matches!(&item, Ok(e) if e.payload.ends_job());
                Some((item, (feed, ends)))
            },
        ))
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
            step: None,
            approved_by: by.to_owned(),
        });
        self.command(tenant, job, etag, by, cmd).await
    }

    /// Approve the LoRA saved at optimisation step `step` (a `save-now`
    /// LoRA between epochs, or an epoch's), like [`approve`](Self::approve).
    pub async fn approve_step(
        &self,
        tenant: &TenantId,
        job: &JobId,
        step: u64,
        by: &str,
        etag: Option<u64>,
    ) -> Result<JobView> {
        let cmd = JobCommand::Approve(ApproveJob {
            epoch: 0,
            step: Some(step),
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
    /// `retry_of`). A failed job itself never changes again. With a request
    /// id, a repeat returns the same new job; the id is that request's for
    /// this failed job only (see [`retry_job_id`](Self::retry_job_id)), never
    /// the job a `create_job` with the same request id made.
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
        match request_id {
            Some(r) => {
                let id = Self::retry_job_id(tenant, job, &r);
                self.create_as(tenant, id, spec, true, "new_job").await
            }
            None => {
                let id = JobId::new(Uuid::now_v7().to_string());
                self.create_as(tenant, id, spec, false, "new_job").await
            }
        }
    }

    /// Ask the job's running training step to save a checkpoint now.
    /// Ask the job's running training to save a checkpoint at its next step
    /// boundary; its executor hears of it at its next heartbeat. The job
    /// must be `Processing`.
    pub async fn request_save(&self, tenant: &TenantId, job: &JobId) -> Result<()> {
        self.signal(tenant, job, "save a checkpoint of", |s| s.save_now = true)
            .await
    }
    /// Ask the job's running training step to render samples now.
    /// Ask the job's running training to render samples at its next step
    /// boundary, like [`request_save`](Self::request_save).
    pub async fn request_sample(&self, tenant: &TenantId, job: &JobId) -> Result<()> {
        self.request_sample_with(tenant, job, SampleOverrides::default())
            .await
    }

    /// Ask for samples with settings other than the job's: each override is
    /// checked against the catalogue's bounds for the job's base model and
    /// engine (and the prompt limits) before anything is asked, and a
    /// refusal names every bad field.
    pub async fn request_sample_with(
        &self,
        tenant: &TenantId,
        job: &JobId,
        overrides: SampleOverrides,
    ) -> Result<()> {
        if !overrides.is_empty() {
            let loaded = self.owned(tenant, job).await?;
            let spec = loaded.job.spec().expect("an owned job has a spec");
            let services = &self.inner.services;
            overrides
                .check(spec, &services.catalogue, &services.limits)
                .map_err(Error::InvalidArgument)?;
        }
        self.signal(tenant, job, "sample", |s| {
            s.sample_now = true;
            s.sample = (!overrides.is_empty()).then_some(overrides);
        })
        .await
    }

    async fn signal(
        &self,
        tenant: &TenantId,
        job: &JobId,
        action: &'static str,
        set: impl FnOnce(&mut super::Signals),
    ) -> Result<()> {
        let loaded = self.owned(tenant, job).await?;
        let state = loaded.job.state().expect("an owned job exists");
        if state != JobState::Processing {
            return Err(Error::WrongState { action, state });
        }
        set(self
            .inner
            .signals
            .lock()
            .expect("signals lock poisoned")
            .entry(job.clone())
            .or_default());
        Ok(())
    }
}
