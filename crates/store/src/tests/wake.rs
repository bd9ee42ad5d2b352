//! A commit in one process wakes the feed readers of another at once on
//! PostgreSQL (LISTEN/NOTIFY), long before their poll would find it.

use std::time::Duration;

use futures::StreamExt;
use loraflow_core::ids::JobId;

use super::support::{Kind, TestStore, database_url, long_history, meta, services};
use crate::{FeedFilter, Store, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_elsewhere_wakes_a_subscriber_before_its_poll() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    // Another process on the same schema that would poll only every 30 s.
    let other = Store::open_with(
        &database_url(),
        services(t.clock.clone()),
        StoreOptions {
            poll_interval: Duration::from_secs(30),
            postgres_schema: t.store.shared().options.postgres_schema.clone(),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open the other store");
    let history = long_history("woken", 3);
    let head = other.feed().head().await.unwrap();
    let feed = other.feed().subscribe(head, FeedFilter::all());
    let mut feed = std::pin::pin!(feed);
    // The subscription finds the feed empty and backs off (1, 2, 4 ... ms):
    // after 4.5 s its current pause runs until about 8.2 s.
    assert!(
        tokio::time::timeout(Duration::from_millis(4500), feed.next())
            .await
            .is_err()
    );
    t.store
        .append_events(&JobId::new("woken"), 0, vec![history[0].clone()], meta())
        .await
        .expect("append");
    let got = tokio::time::timeout(Duration::from_millis(1500), feed.next())
        .await
        .expect("woken by the notification, not by the next poll")
        .expect("an event")
        .expect("read");
    assert_eq!((got.job_id.as_str(), got.sequence), ("woken", 1));
    other.close().await;
    t.cleanup().await;
}

/// The next notification's payload.
async fn next(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification")
        .expect("received")
        .payload()
        .to_owned()
}

/// A store on its own sends no notifications (each would be a write
/// transaction); once another store on the schema says hello, it answers
/// and notifies after its commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_notifies_only_once_another_store_listens() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    let crate::backend::Backend::Postgres(pool) = &t.store.shared().backend else {
        unreachable!("a PostgreSQL store")
    };
    // A bare listener on the channel: it says no hello, so it is no peer.
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    let channel: String = sqlx::query_scalar(&format!("SELECT {}", crate::notify::CHANNEL))
        .fetch_one(pool)
        .await
        .unwrap();
    listener.listen(&channel).await.unwrap();
    let history = long_history("lonely", 2);
    let job = JobId::new("lonely");
    t.store
        .append_events(&job, 0, vec![history[0].clone()], meta())
        .await
        .expect("append");
    // Time for a notification to go out, were one sent.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another store opens: its hello is the first thing on the channel
    // (notifications arrive in commit order), and the first store answers.
    let other = t.reopen().await;
    let hello = next(&mut listener).await;
    let other_id = hello
        .strip_prefix("hello:")
        .expect("a hello first")
        .to_owned();
    let here = next(&mut listener).await;
    let own = here.strip_prefix("here:").expect("the answer").to_owned();
    assert_ne!(own, other_id);
    // Now a commit of the first store is announced, with its id.
    t.store
        .append_events(&job, 1, vec![history[1].clone()], meta())
        .await
        .expect("append");
    assert_eq!(next(&mut listener).await, own);
    other.close().await;
    t.cleanup().await;
}
