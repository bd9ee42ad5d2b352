//! The feed is gap-free under concurrency on PostgreSQL: 16 writers commit
//! 20,800 events in batches while a subscriber follows the feed; it sees
//! every event exactly once, in position order, each job in sequence order.
//! (An identity-ordered feed fails this: a transaction can draw a smaller
//! position than one that commits before it.)

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use loraflow_core::ids::JobId;

use super::support::{Kind, TestStore, long_history, meta};
use crate::FeedFilter;

const WRITERS: usize = 16;
const EVENTS_PER_JOB: usize = 1300;
/// Events per commit, varied per writer so transactions interleave unevenly.
const BATCH: [usize; 4] = [1, 3, 10, 25];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_and_a_live_subscriber_on_postgres() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    let total = WRITERS * EVENTS_PER_JOB;
    assert!(total >= 20_000);
    let histories: Vec<_> = (0..WRITERS)
        .map(|w| long_history(&format!("g{w}"), EVENTS_PER_JOB)[..EVENTS_PER_JOB].to_vec())
        .collect();

    let subscriber = {
        let feed = t.store.feed();
        tokio::spawn(async move {
            let mut stream = Box::pin(feed.subscribe(0, FeedFilter::all()));
            let mut seen = Vec::with_capacity(total);
            while seen.len() < total {
                let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .expect("the feed stalled")
                    .expect("the stream goes on")
                    .expect("no read error");
                seen.push((e.position, e.job_id, e.sequence));
            }
            // Nothing more arrives: no event is delivered twice.
            let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
            assert!(
                extra.is_err(),
                "an event beyond the {total} written: {extra:?}"
            );
            seen
        })
    };

    let mut writers = Vec::new();
    for (w, events) in histories.into_iter().enumerate() {
        let store = t.store.clone();
        writers.push(tokio::spawn(async move {
            let job = JobId::new(format!("g{w}"));
            let mut at = 0u64;
            for chunk in events.chunks(BATCH[w % BATCH.len()]) {
                store
                    .append_events(&job, at, chunk.to_vec(), meta())
                    .await
                    .expect("append");
                at += chunk.len() as u64;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let seen = subscriber.await.unwrap();

    assert_eq!(seen.len(), total);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "positions strictly increase"
    );
    let mut next: HashMap<JobId, u64> = HashMap::new();
    for (_, job, seq) in &seen {
        let n = next.entry(job.clone()).or_insert(1);
        assert_eq!(seq, n, "job {job}: each event once, in sequence order");
        *n += 1;
    }
    assert_eq!(next.len(), WRITERS);
    assert!(next.values().all(|n| *n == EVENTS_PER_JOB as u64 + 1));
    // A fresh catch-up read agrees with what the live subscriber saw.
    let mut after = 0;
    let mut read = Vec::new();
    loop {
        let page = t
            .store
            .feed()
            .read(after, 5000, &FeedFilter::all())
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        read.extend(page.into_iter().map(|e| (e.position, e.job_id, e.sequence)));
    }
    assert_eq!(read, seen);
    t.cleanup().await;
}
