//! PostgreSQL: a group of commits is written by one statement whose text
//! does not depend on how many commits, events, opened or closed jobs it
//! holds, so each connection prepares it once.

use cqrs_es::persist::SerializedEvent;

use super::support::{Kind, TestStore, test_options};
use crate::backend::{AGGREGATE, postgres};
use crate::chain::Head;
use crate::options::StoreOptions;

/// `events` events of job `job`, from sequence 1; the first is its
/// creation and, with `ends`, the last its end (which moves the open-jobs
/// index).
fn commit(job: &str, events: u64, ends: bool) -> (Vec<SerializedEvent>, Head) {
    let event = |sequence: u64| {
        let event_type = match sequence {
            1 => "JobCreated",
            n if n == events && ends => "JobCancelled",
            _ => "JobSubmitted",
        };
        SerializedEvent {
            aggregate_id: job.to_owned(),
            sequence: sequence as usize,
            aggregate_type: AGGREGATE.to_owned(),
            event_type: event_type.to_owned(),
            event_version: "1".to_owned(),
            payload: serde_json::json!({ "n": sequence, "job": job }),
            metadata: serde_json::json!({ "tenant": "acme" }),
        }
    };
    let head = Head {
        job_id: job.to_owned(),
        sequence: events,
        link: format!("link-{job}"),
        key_id: "key".to_owned(),
        sig: format!("sig-{job}"),
    };
    ((1..=events).map(event).collect(), head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_groups_of_any_size_share_one_prepared_insert() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    // One connection: the session whose prepared statements are counted.
    let options = StoreOptions {
        max_connections: Some(1),
        ..test_options(t.schema().map(str::to_owned))
    };
    let pool = postgres::connect(&t.url, &options).await.unwrap().main;
    let groups = [
        vec![commit("job-a", 1, false)],
        vec![commit("job-b", 3, false), commit("job-c", 2, true)],
        vec![
            commit("job-d", 2, false),
            commit("job-e", 1, false),
            commit("job-f", 4, true),
        ],
    ];
    let mut last = 0;
    for group in &groups {
        let members: Vec<(&[SerializedEvent], &Head)> =
            group.iter().map(|(e, h)| (e.as_slice(), h)).collect();
        let positions = postgres::insert_many(&pool, AGGREGATE, &members)
            .await
            .unwrap();
        assert_eq!(positions.len(), group.len());
        assert!(
            positions.iter().all(|&p| p > last),
            "{positions:?} after {last}"
        );
        last = positions.into_iter().max().unwrap();
    }
    let prepared: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'WITH ins AS%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(prepared.len(), 1, "one insert statement: {prepared:#?}");

    // Everything the groups hold was written: the events in order within
    // each job, every head, and the open-jobs index (two jobs ended).
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, payload::text FROM events ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 13);
    for job in ["job-a", "job-b", "job-c", "job-d", "job-e", "job-f"] {
        let sequences: Vec<i64> = rows
            .iter()
            .filter(|(j, _, _)| j == job)
            .map(|(_, s, _)| *s)
            .collect();
        assert_eq!(
            sequences,
            (1..=sequences.len() as i64).collect::<Vec<_>>(),
            "{job}"
        );
    }
    assert_eq!(
        rows[0].2, r#"{"n": 1, "job": "job-a"}"#,
        "JSON as jsonb writes it"
    );
    let heads: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT job_id, sequence, sig FROM job_heads ORDER BY job_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(heads.len(), 6);
    assert_eq!(heads[5], ("job-f".to_owned(), 4, "sig-job-f".to_owned()));
    let open: Vec<String> = sqlx::query_scalar("SELECT job_id FROM open_jobs ORDER BY job_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(open, ["job-a", "job-b", "job-d", "job-e"]);
    pool.close().await;
    t.cleanup().await;
}
