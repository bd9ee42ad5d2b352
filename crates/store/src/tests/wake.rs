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

    // Another store opens; the two learn of each other (whichever hello is
    // heard first). Until then nothing announced the first store's commit.
    let own = t.store.shared().notify_id.to_string();
    let other = t.reopen().await;
    let peers = &t.store.shared().peers;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !peers.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first store hears of the newcomer");
    let mut heard = Vec::new();
    while let Ok(n) = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await {
        heard.push(n.expect("received").payload().to_owned());
    }
    assert!(
        !heard.contains(&own),
        "a notification before any store listened: {heard:?}"
    );
    let newcomer = format!("hello:{}", other.shared().notify_id);
    assert!(heard.contains(&newcomer), "{heard:?}");
    // Now a commit of the first store is announced, with its id.
    t.store
        .append_events(&job, 1, vec![history[1].clone()], meta())
        .await
        .expect("append");
    while next(&mut listener).await != own {}
    other.close().await;
    t.cleanup().await;
}
