//! Reading the views the projection runner keeps: job status, job lists with
//! opaque page tokens, and the queue.

use std::sync::Arc;

use loraflow_core::ids::JobId;
use loraflow_core::views::{JobListFilter, JobStatus, JobSummary, QueueEntry, QueueView};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::event::Position;
use crate::page_token;
use crate::projection::VIEWS;
use crate::store::Shared;

/// Page size when a query gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A job list request (AIP-158 paging).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobListQuery {
    pub filter: JobListFilter,
    /// 0: [`DEFAULT_PAGE_SIZE`]; above [`MAX_PAGE_SIZE`]: that maximum.
    pub page_size: u32,
    /// The `next_page_token` of the previous page, with the same filter.
    pub page_token: Option<String>,
}

/// One page of a job list, newest job first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Where a list page ends: the last job's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListCursor {
    pub created_us: i64,
    pub job_id: String,
}

impl ListCursor {
    fn of(s: &JobStatus) -> Self {
        Self {
            created_us: s.created_at.timestamp_micros(),
            job_id: s.job_id.to_string(),
        }
    }

    /// Whether `s` comes after this cursor in list order (newest first).
    pub(crate) fn precedes(&self, s: &JobStatus) -> bool {
        (s.created_at.timestamp_micros(), s.job_id.as_str())
            < (self.created_us, self.job_id.as_str())
    }
}

/// A handle on the views; cheap to clone.
#[derive(Clone)]
pub struct Views {
    pub(crate) shared: Arc<Shared>,
}

impl Views {
    /// A job's status as of the views' position, or `None` if the views have
    /// not seen the job.
    pub async fn job_status(&self, job: &JobId) -> Result<Option<JobStatus>> {
        self.shared.backend.job_status(job).await
    }

    /// One page of jobs matching the query's filter, newest first.
    pub async fn list_jobs(&self, query: &JobListQuery) -> Result<JobPage> {
        let size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let key = &self.shared.page_key;
        let after = query
            .page_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| page_token::decode(key, &query.filter, t))
            .transpose()?;
        // One more than asked, to know whether a next page exists.
        let mut jobs = self
            .shared
            .backend
            .list_jobs(&query.filter, after.as_ref(), size + 1)
            .await?;
        let next_page_token = if jobs.len() > size {
            jobs.truncate(size);
            jobs.last()
                .map(|last| page_token::encode(key, &query.filter, &ListCursor::of(last)))
        } else {
            None
        };
        Ok(JobPage {
            jobs: jobs.iter().map(JobSummary::from).collect(),
            next_page_token,
        })
    }

    /// Every queued step in serving order (priority, then age), with its place.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>> {
        Ok(QueueView::ranked(self.shared.backend.queue().await?))
    }

    /// The global position the views include (their checkpoint).
    pub async fn position(&self) -> Result<Position> {
        self.shared.backend.checkpoint(VIEWS).await
    }
}
