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
