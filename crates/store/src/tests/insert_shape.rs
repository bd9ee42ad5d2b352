//! A group of commits written together: on PostgreSQL by one statement
//! whose text does not depend on how many commits, events, opened or
//! closed jobs it holds, so each connection prepares it once; on SQLite by
//! one statement per table, its rows in one JSON array.

use cqrs_es::persist::SerializedEvent;

use super::support::{Kind, TestStore, test_options};
use crate::backend::{AGGREGATE, Backend, postgres, sqlite};
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

/// SQLite: each commit's answer is its last event's position, the
/// positions follow the largest stored in the order given (a job twice in
/// one group included), payload and metadata are stored as the text given,
/// and the heads and the open-jobs index are as commits one by one leave
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_group_is_written_as_its_commits_one_by_one() {
    let t = TestStore::open(Kind::Sqlite).await.unwrap();
    let Backend::Sqlite(pool) = &t.store.shared().backend else {
        panic!("a SQLite store");
    };
    let before: i64 = sqlx::query_scalar("SELECT IFNULL(MAX(global_position), 0) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let (mut first, head) = commit("job-x", 2, false);
    // Text JSON would write otherwise: escapes, non-ASCII, a float.
    first[1].payload = serde_json::json!({ "q": "a \"quoted\" é", "loss": 0.1, "z": [1e-7] });
    let (mut later, mut later_head) = commit("job-x", 4, true);
    later.drain(..2);
    later_head.sig = "sig-job-x-later".to_owned();
    let group = vec![
        (first, head),
        commit("job-y", 3, false),
        (later, later_head),
    ];
    let positions = sqlite::insert_many(pool, AGGREGATE, &group).await.unwrap();
    let before = before as u64;
    assert_eq!(positions, [before + 2, before + 5, before + 7]);

    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT global_position, aggregate_id, sequence, payload FROM events
          WHERE global_position > ? ORDER BY global_position",
    )
    .bind(before as i64)
    .fetch_all(pool)
    .await
    .unwrap();
    let order: Vec<(&str, i64)> = rows.iter().map(|(_, j, s, _)| (j.as_str(), *s)).collect();
    assert_eq!(
        order,
        [
            ("job-x", 1),
            ("job-x", 2),
            ("job-y", 1),
            ("job-y", 2),
            ("job-y", 3),
            ("job-x", 3),
            ("job-x", 4),
        ]
    );
    assert_eq!(
        rows[1].3,
        group[0].0[1].payload.to_string(),
        "the payload's text as given"
    );
    let heads: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT job_id, sequence, sig FROM job_heads WHERE job_id IN ('job-x', 'job-y') ORDER BY job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        heads,
        [
            ("job-x".to_owned(), 4, "sig-job-x-later".to_owned()),
            ("job-y".to_owned(), 3, "sig-job-y".to_owned())
        ]
    );
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM open_jobs WHERE job_id IN ('job-x', 'job-y') ORDER BY job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(open, ["job-y"], "job-x opened and ended in one group");
    t.cleanup().await;
}
