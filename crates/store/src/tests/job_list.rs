//! `JobList` filters by base model and engine, alone, together, with a
//! tenant, and across pages, on every backend.

use chrono::Duration as ChronoDuration;
use loraflow_core::catalogue::Engine;
use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::job::canned::sample_spec;
use loraflow_core::job::{CreateJob, JobCommand};
use loraflow_core::views::JobListFilter;

use super::support::{TestStore, meta, on_every_backend, readable};
use crate::{Error, JobListQuery};

/// Jobs of every (model, engine) pair the tests filter on, oldest first.
const JOBS: [(&str, &str, &str, Engine); 6] = [
    ("m0", "acme", "sd15", Engine::Native),
    ("m1", "acme", "sd15", Engine::Kohya),
    ("m2", "acme", "sdxl", Engine::Kohya),
    ("m3", "globex", "sd15", Engine::Kohya),
    ("m4", "acme", "sd21", Engine::Native),
    ("m5", "acme", "sdxl", Engine::AiToolkit),
];

async fn seed(t: &TestStore) {
    let mut last = 0;
    for (job, tenant, model, engine) in JOBS {
        t.clock.advance(ChronoDuration::seconds(1));
        let mut spec = sample_spec();
        spec.tenant = TenantId::new(tenant);
        spec.base_model = model.into();
        spec.engine = engine;
        last = t
            .store
            .execute(
                &JobId::new(job),
                JobCommand::Create(CreateJob {
                    job_id: JobId::new(job),
                    spec,
                }),
                meta(),
            )
            .await
            .unwrap_or_else(|e| panic!("create {job}: {e}"))
            .position
            .expect("a create writes");
    }
    // On PostgreSQL the feed shows a commit only once older transactions of
    // the cluster (other tests') have ended.
    readable(&t.store, last).await;
    t.store.catch_up_views().await.expect("views catch up");
}

/// The ids of every job matching `filter`, newest first, read `page_size` at a time.
async fn ids(t: &TestStore, filter: JobListFilter, page_size: u32) -> Vec<String> {
    let mut query = JobListQuery {
        filter,
        page_size,
        page_token: None,
    };
    let mut out = Vec::new();
    loop {
        let page = t.store.views().list_jobs(&query).await.expect("list");
        assert!(page.jobs.len() <= page_size.max(1) as usize);
        out.extend(page.jobs.into_iter().map(|j| j.job_id.0));
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => return out,
        }
    }
}

fn filter(model: Option<&str>, engine: Option<Engine>) -> JobListFilter {
    JobListFilter {
        base_model: model.map(Into::into),
        engine,
        ..Default::default()
    }
}

async fn lists_filter_by_base_model_and_engine(t: &TestStore) {
    seed(t).await;
    assert_eq!(
        ids(t, filter(Some("sd15"), None), 50).await,
        ["m3", "m1", "m0"]
    );
    assert_eq!(
        ids(t, filter(None, Some(Engine::Kohya)), 50).await,
        ["m3", "m2", "m1"]
    );
    assert_eq!(
        ids(t, filter(Some("sdxl"), Some(Engine::Kohya)), 50).await,
        ["m2"]
    );
    assert_eq!(
        ids(t, filter(None, Some(Engine::AiToolkit)), 50).await,
        ["m5"]
    );
    // A model nobody trains here, and a pair no job has.
    assert!(ids(t, filter(Some("flux-dev"), None), 50).await.is_empty());
    assert!(
        ids(t, filter(Some("sd21"), Some(Engine::Kohya)), 50)
            .await
            .is_empty()
    );
    // With a tenant: globex's one sd15 job is not acme's.
    let acme_sd15 = JobListFilter {
        tenant: Some("acme".into()),
        ..filter(Some("sd15"), Some(Engine::Kohya))
    };
    assert_eq!(ids(t, acme_sd15, 50).await, ["m1"]);
}

async fn model_and_engine_filters_page_and_bind_their_tokens(t: &TestStore) {
    seed(t).await;
    // One job a page: every match once, in order.
    assert_eq!(
        ids(t, filter(Some("sd15"), None), 1).await,
        ["m3", "m1", "m0"]
    );
    assert_eq!(
        ids(t, filter(None, Some(Engine::Native)), 1).await,
        ["m4", "m0"]
    );
    // A token is bound to its filter: another model or engine refuses it.
    let first = t
        .store
        .views()
        .list_jobs(&JobListQuery {
            filter: filter(Some("sd15"), None),
            page_size: 1,
            page_token: None,
        })
        .await
        .unwrap();
    let token = first.next_page_token.expect("more sd15 jobs");
    for other in [
        filter(Some("sdxl"), None),
        filter(Some("sd15"), Some(Engine::Kohya)),
        filter(None, None),
    ] {
        let err = t
            .store
            .views()
            .list_jobs(&JobListQuery {
                filter: other.clone(),
                page_size: 1,
                page_token: Some(token.clone()),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidPageToken { .. }),
            "{other:?}: {err:?}"
        );
    }
}

on_every_backend!(
    lists_filter_by_base_model_and_engine,
    model_and_engine_filters_page_and_bind_their_tokens,
);
