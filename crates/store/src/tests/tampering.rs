//! The signed log against someone with write access to the database, on
//! SQLite and PostgreSQL: each kind of tampering, done with SQL, is named
//! with its kind and position by the full verification, and the command
//! path refuses the job.

use loraflow_core::ids::JobId;
use loraflow_core::job::{CancelJob, JobCommand};
use serde_json::{Value, json};

use super::support::{TestStore, long_history, meta, on_databases};
use crate::backend::Backend;
use crate::chain::{GENESIS_HASH, event_hash_v1, event_link};
use crate::event::RawEvent;
use crate::verify::{ChainFault, Depth};
use crate::{Error, Metadata};

const JOB: &str = "job-x";

fn job() -> JobId {
    JobId::new(JOB)
}

/// Write `events` after sequence `from`, each its own commit, by alice.
async fn write(t: &TestStore, from: u64, events: &[loraflow_core::job::JobEvent]) {
    let mut m: Metadata = meta();
    m.insert("actor".into(), "alice".into());
    for (i, e) in events.iter().enumerate() {
        t.store
            .append_events(&job(), from + i as u64, vec![e.clone()], m.clone())
            .await
            .expect("append");
    }
}

/// A job of six events, each its own commit, by alice of tenant acme.
async fn six_events(t: &TestStore) -> Vec<RawEvent> {
    write(t, 0, &long_history(JOB, 6)[..6]).await;
    let raw = t.store.raw_history(&job()).await.unwrap();
    assert_eq!(raw.len(), 6);
    raw
}

/// Run one statement per backend (the job id and values are inlined).
async fn sql(t: &TestStore, sqlite: &str, postgres: &str) {
    match &t.store.shared().backend {
        Backend::Sqlite(pool) => {
            sqlx::query(sqlite).execute(pool).await.expect(sqlite);
        }
        Backend::Postgres(pool) => {
            sqlx::query(postgres).execute(pool).await.expect(postgres);
        }
        Backend::Memory(..) => unreachable!("tampering tests use databases"),
    }
}

/// Set one metadata or payload field of event `seq` (`path` is a key of
/// the metadata, or `payload.<Variant>.<field>`).
async fn set_field(t: &TestStore, seq: u64, column: &str, path: &[&str], value: &Value) {
    let sqlite_path = format!("$.{}", path.join("."));
    let pg_path = format!("{{{}}}", path.join(","));
    let v = value.to_string().replace('\'', "''");
    sql(
        t,
        &format!(
            "UPDATE events SET {column} = json_set({column}, '{sqlite_path}', json('{v}')) WHERE aggregate_id = '{JOB}' AND sequence = {seq}"
        ),
        &format!(
            "UPDATE events SET {column} = jsonb_set({column}::jsonb, '{pg_path}', '{v}'::jsonb)::json WHERE aggregate_id = '{JOB}' AND sequence = {seq}"
        ),
    )
    .await;
}

async fn write_metadata(t: &TestStore, seq: u64, metadata: &Value) {
    let v = metadata.to_string().replace('\'', "''");
    sql(
        t,
        &format!(
            "UPDATE events SET metadata = '{v}' WHERE aggregate_id = '{JOB}' AND sequence = {seq}"
        ),
        &format!(
            "UPDATE events SET metadata = '{v}'::json WHERE aggregate_id = '{JOB}' AND sequence = {seq}"
        ),
    )
    .await;
}

async fn delete_seq(t: &TestStore, seq: u64) {
    let q = format!("DELETE FROM events WHERE aggregate_id = '{JOB}' AND sequence = {seq}");
    sql(t, &q, &q).await;
}

async fn set_seq(t: &TestStore, from: u64, to: u64) {
    let q = format!(
        "UPDATE events SET sequence = {to} WHERE aggregate_id = '{JOB}' AND sequence = {from}"
    );
    sql(t, &q, &q).await;
}

/// The first problem the full verification names: kind, sequence, position.
async fn found(t: &TestStore) -> (ChainFault, u64, u64) {
    let r = t
        .store
        .verify_job_with(&job(), t.store.keyring(), Depth::Full)
        .await
        .unwrap();
    let p = r.first_problem().expect("the tampering is detected");
    (p.fault, p.sequence, p.position)
}

/// The command path refuses the job with the kind named.
async fn refused(t: &TestStore, kind: ChainFault) {
    let err = t
        .store
        .execute(
            &job(),
            JobCommand::Cancel(CancelJob {
                reason: "r".into(),
                cancelled_by: "ops".into(),
            }),
            meta(),
        )
        .await
        .unwrap_err();
    let Error::TamperedLog(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.fault, kind, "{e}");
    assert!(t.store.load(&job()).await.is_err(), "load refuses too");
}

async fn an_intact_log_verifies_and_heads_follow_commits(t: &TestStore) {
    let raw = six_events(t).await;
    let r = t
        .store
        .verify_job_with(&job(), t.store.keyring(), Depth::Full)
        .await
        .unwrap();
    assert!(r.is_valid(), "{r:?}");
    let (_, head) = t.store.job_log(&job()).await.unwrap();
    let head = head.expect("a head");
    assert_eq!(head.sequence, 6);
    assert_eq!(Some(head.link.as_str()), raw[5].metadata["hash"].as_str());
    for e in &raw {
        assert_eq!(e.metadata["chain"], "2");
        assert_eq!(e.metadata["key_id"], t.store.audit_key().key_id());
        assert_eq!(e.metadata["actor"], "alice");
    }
    // A reopened store (the same key file, or this process' key) accepts it.
    let again = t.reopen().await;
    again.load(&job()).await.unwrap().expect("loads");
    again.close().await;
}

async fn an_edited_payload_is_edited(t: &TestStore) {
    let raw = six_events(t).await;
    set_field(t, 3, "payload", &["forged"], &json!(true)).await;
    assert_eq!(found(t).await, (ChainFault::Edited, 3, raw[2].position));
    refused(t, ChainFault::Edited).await;
}

async fn edited_metadata_is_edited(t: &TestStore) {
    let raw = six_events(t).await;
    set_field(t, 2, "metadata", &["actor"], &json!("mallory")).await;
    assert_eq!(found(t).await, (ChainFault::Edited, 2, raw[1].position));
    refused(t, ChainFault::Edited).await;
}

async fn edited_tenant_and_time_are_edited(t: &TestStore) {
    let raw = six_events(t).await;
    set_field(
        t,
        5,
        "metadata",
        &["recorded_at"],
        &json!("2020-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(found(t).await, (ChainFault::Edited, 5, raw[4].position));
    set_field(t, 4, "metadata", &["tenant"], &json!("other")).await;
    assert_eq!(found(t).await, (ChainFault::Edited, 4, raw[3].position));
    refused(t, ChainFault::Edited).await;
}

async fn a_deleted_tail_is_truncated(t: &TestStore) {
    let raw = six_events(t).await;
    delete_seq(t, 6).await;
    assert_eq!(found(t).await, (ChainFault::Truncated, 6, raw[4].position));
    refused(t, ChainFault::Truncated).await;
    delete_seq(t, 5).await;
    assert_eq!(found(t).await, (ChainFault::Truncated, 5, raw[3].position));
    refused(t, ChainFault::Truncated).await;
}

async fn a_deleted_middle_event_is_removed(t: &TestStore) {
    let raw = six_events(t).await;
    delete_seq(t, 3).await;
    assert_eq!(found(t).await, (ChainFault::Removed, 3, raw[3].position));
    refused(t, ChainFault::Removed).await;
}

async fn swapped_sequences_are_reordered(t: &TestStore) {
    six_events(t).await;
    set_seq(t, 3, 900_000).await;
    set_seq(t, 4, 3).await;
    set_seq(t, 900_000, 4).await;
    let now = t.store.raw_history(&job()).await.unwrap();
    assert_eq!(found(t).await, (ChainFault::Reordered, 3, now[2].position));
    refused(t, ChainFault::Reordered).await;
}

async fn a_replaced_signature_is_a_bad_signature(t: &TestStore) {
    let raw = six_events(t).await;
    let other = raw[0].metadata["sig"].clone();
    set_field(t, 4, "metadata", &["sig"], &other).await;
    assert_eq!(
        found(t).await,
        (ChainFault::BadSignature, 4, raw[3].position)
    );
    // The command path checks links and the head only; the signature of
    // one event is the audit's to check.
    t.store.load(&job()).await.unwrap().expect("loads");
}

async fn a_deleted_head_is_truncated(t: &TestStore) {
    six_events(t).await;
    let q = format!("DELETE FROM job_heads WHERE job_id = '{JOB}'");
    sql(t, &q, &q).await;
    let (kind, seq, _) = found(t).await;
    assert_eq!((kind, seq), (ChainFault::Truncated, 6));
    refused(t, ChainFault::Truncated).await;
}

/// An attacker edits an event and recomputes every link after it (links
/// need no key): the head's signature and the event's own give it away.
async fn an_edit_with_rebuilt_links_is_edited(t: &TestStore) {
    let mut raw = six_events(t).await;
    raw[2].metadata["actor"] = json!("mallory");
    let mut prev = raw[1].metadata["hash"].as_str().unwrap().to_owned();
    for e in &mut raw[2..] {
        let link = event_link(
            &prev,
            JOB,
            e.sequence,
            &e.event_type,
            &e.event_version,
            &e.payload,
            &e.metadata,
        );
        e.metadata["prev_hash"] = json!(prev);
        e.metadata["hash"] = json!(link);
        prev = link;
        write_metadata(t, e.sequence, &e.metadata).await;
    }
    assert_eq!(found(t).await, (ChainFault::Edited, 3, raw[2].position));
    refused(t, ChainFault::Edited).await;
}

/// The whole chain rebuilt with the old unkeyed scheme (after an edit), and
/// the head deleted too: reported unsigned, refused on the command path.
async fn a_chain_rebuilt_with_the_old_scheme_is_unsigned(t: &TestStore) {
    let mut raw = six_events(t).await;
    set_field(t, 2, "metadata", &["actor"], &json!("mallory")).await;
    raw[1].metadata["actor"] = json!("mallory");
    let mut prev = GENESIS_HASH.to_owned();
    for e in &mut raw {
        let m = e.metadata.as_object_mut().unwrap();
        for k in ["chain", "sig", "key_id"] {
            m.remove(k);
        }
        let h = event_hash_v1(&prev, &e.event_type, &e.event_version, &e.payload);
        m.insert("prev_hash".into(), json!(prev));
        m.insert("hash".into(), json!(h));
        prev = h;
        write_metadata(t, e.sequence, &e.metadata).await;
    }
    assert_eq!(found(t).await, (ChainFault::Unsigned, 1, raw[0].position));
    refused(t, ChainFault::Edited).await;
    let q = format!("DELETE FROM job_heads WHERE job_id = '{JOB}'");
    sql(t, &q, &q).await;
    assert_eq!(found(t).await, (ChainFault::Unsigned, 1, raw[0].position));
    refused(t, ChainFault::Unsigned).await;
}

/// A job rolled back to an older genuine head together with its events
/// verifies on its own; the feed checkpoint signed after the deleted events
/// gives it away.
async fn a_rollback_to_an_older_head_is_caught_by_a_checkpoint(t: &TestStore) {
    let events = long_history(JOB, 8);
    write(t, 0, &events[..6]).await;
    let (_, old_head) = t.store.job_log(&job()).await.unwrap();
    let old_head = old_head.unwrap();
    write(t, 6, &events[6..8]).await;
    let raw = t.store.raw_history(&job()).await.unwrap();
    super::support::readable(&t.store, raw[7].position).await;
    let signed = t.store.write_checkpoint().await.unwrap();
    assert_eq!(signed.position, raw[7].position);
    let keys = t.store.keyring().clone();
    let feed = t.store.raw_feed(None).await.unwrap();
    let cps = t.store.audit_checkpoints().await.unwrap();
    assert!(crate::verify_checkpoints(&feed, &cps, &keys).is_empty());

    delete_seq(t, 8).await;
    delete_seq(t, 7).await;
    let q = format!(
        "UPDATE job_heads SET sequence = 6, link = '{}', sig = '{}' WHERE job_id = '{JOB}'",
        old_head.link, old_head.sig
    );
    sql(t, &q, &q).await;
    let r = t
        .store
        .verify_job_with(&job(), &keys, Depth::Full)
        .await
        .unwrap();
    assert!(r.is_valid(), "the job alone looks genuine: {r:?}");
    let feed = t.store.raw_feed(None).await.unwrap();
    let problems = crate::verify_checkpoints(&feed, &cps, &keys);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].position, signed.position);
}

/// Four events of `JOB` as a release before signing wrote them (the old
/// unkeyed hash, no signature); the last hash.
async fn plant_unsigned(t: &TestStore) -> String {
    use cqrs_es::DomainEvent;
    let mut prev = GENESIS_HASH.to_owned();
    for (i, e) in long_history(JOB, 4)[..4].iter().enumerate() {
        let payload = serde_json::to_value(e).unwrap();
        let hash = event_hash_v1(&prev, &e.event_type(), &e.event_version(), &payload);
        let raw = RawEvent {
            position: 0,
            job_id: job(),
            sequence: i as u64 + 1,
            event_type: e.event_type(),
            event_version: e.event_version(),
            payload,
            metadata: json!({"tenant": "acme", "recorded_at": "2025-01-01T00:00:00Z", "prev_hash": prev, "hash": hash}),
        };
        match &t.store.shared().backend {
            Backend::Sqlite(pool) => crate::backend::sqlite::insert_raw(pool, &raw)
                .await
                .unwrap(),
            Backend::Postgres(pool) => crate::backend::postgres::insert_raw(pool, &raw)
                .await
                .unwrap(),
            Backend::Memory(..) => unreachable!(),
        }
        prev = hash;
    }
    prev
}

/// A store written before signing: its events carry the old unkeyed hash.
/// After the upgrade the engine still serves the job, the next event
/// chains from the old prefix's last hash, and the audit reports the
/// prefix as unsigned, never as valid.
async fn a_store_written_before_signing_is_reported_unsigned(t: &TestStore) {
    let prev = plant_unsigned(t).await;
    // The upgrade: a store that has never signed opens on these events.
    let q = "DELETE FROM audit_checkpoints";
    sql(t, q, q).await;
    let store = t.reopen().await;
    let planted = store.raw_history(&job()).await.unwrap();
    super::support::readable(&store, planted[3].position).await;
    assert!(store.signing_began() >= planted[3].position);
    let c = store
        .execute(
            &job(),
            JobCommand::Cancel(CancelJob {
                reason: "after the upgrade".into(),
                cancelled_by: "ops".into(),
            }),
            meta(),
        )
        .await
        .expect("a job written before signing is still served");
    assert_eq!(c.sequence, 5);
    let raw = store.raw_history(&job()).await.unwrap();
    assert_eq!(
        raw[4].metadata["prev_hash"],
        json!(prev),
        "continues the old chain"
    );
    assert_eq!(raw[4].metadata["chain"], "2");
    let r = store
        .verify_job_with(&job(), store.keyring(), Depth::Full)
        .await
        .unwrap();
    assert!(r.fault.is_none(), "{r:?}");
    let p = r.first_problem().expect("the unsigned prefix is reported");
    assert_eq!(
        (p.fault, p.sequence, p.position),
        (ChainFault::Unsigned, 1, raw[0].position)
    );
    assert!(p.detail.contains("sequences 1 to 4"), "{}", p.detail);
    // An edit inside the old prefix breaks the signed event that covers it.
    set_field(t, 2, "payload", &["forged"], &json!(true)).await;
    let r = store
        .verify_job_with(&job(), store.keyring(), Depth::Full)
        .await
        .unwrap();
    assert_eq!(r.fault.unwrap().fault, ChainFault::Edited);
    store.close().await;
}

on_databases!(
    a_store_written_before_signing_is_reported_unsigned,
    a_rollback_to_an_older_head_is_caught_by_a_checkpoint,
    an_intact_log_verifies_and_heads_follow_commits,
    an_edited_payload_is_edited,
    edited_metadata_is_edited,
    edited_tenant_and_time_are_edited,
    a_deleted_tail_is_truncated,
    a_deleted_middle_event_is_removed,
    swapped_sequences_are_reordered,
    a_replaced_signature_is_a_bad_signature,
    a_deleted_head_is_truncated,
    an_edit_with_rebuilt_links_is_edited,
    a_chain_rebuilt_with_the_old_scheme_is_unsigned,
);

/// On PostgreSQL a transaction still open holds the feed below the events
/// committed after it. A store that has never signed, opened then, waits
/// for that transaction before its first checkpoint, so every event
/// written before signing lies below where signing began; one that waits
/// too long says so and signs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_first_checkpoint_waits_for_the_feed_to_show_every_earlier_event() {
    use sqlx::Connection;
    let Some(t) = TestStore::open(super::support::Kind::Postgres).await else {
        return;
    };
    let q = "DELETE FROM audit_checkpoints";
    sql(&t, q, q).await;
    // Another process's transaction, begun (and given its id) before the
    // old events are written.
    let mut other = sqlx::PgConnection::connect(&t.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut other)
        .await
        .unwrap();
    plant_unsigned(&t).await;
    let planted = t.store.raw_history(&job()).await.unwrap();
    let last = planted[3].position;

    let impatient = crate::StoreOptions {
        acquire_timeout: std::time::Duration::from_millis(300),
        ..super::support::test_options(t.schema().map(str::to_owned))
    };
    let Err(e) =
        crate::Store::open_with(&t.url, super::support::services(t.clock.clone()), impatient).await
    else {
        panic!("the open transaction outlasts the store's patience");
    };
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains(&last.to_string()), "{e}");
    assert!(
        t.store.audit_checkpoints().await.unwrap().is_empty(),
        "nothing is signed"
    );

    let opening = tokio::spawn({
        let url = t.url.clone();
        let clock = t.clock.clone();
        let options = super::support::test_options(t.schema().map(str::to_owned));
        async move { crate::Store::open_with(&url, super::support::services(clock), options).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!opening.is_finished(), "it waits for the open transaction");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let store = opening
        .await
        .unwrap()
        .expect("opens once the transaction ends");
    assert!(
        store.signing_began() >= last,
        "signing began at {}, below the old event at {last}",
        store.signing_began()
    );
    store.close().await;
    t.cleanup().await;
}
