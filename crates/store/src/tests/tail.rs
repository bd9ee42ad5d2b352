//! The feed's tail: the followers of one process read the recent feed from
//! memory, read from the database once for all of them. Each follower sees
//! what the database's feed holds for its filter, in order and once, whether
//! it starts at the head, before the tail's start, or falls so far behind
//! that the tail no longer holds its position and reads the database again.

use std::time::Duration;

use futures::StreamExt;
use loraflow_core::ids::JobId;
use tokio::sync::{mpsc, watch};

use super::support::{TestStore, long_history, meta, on_every_backend, readable};
use crate::event::Position;
use crate::feed::TAIL_EVENTS;
use crate::{FeedFilter, Store};

const WRITERS: usize = 6;
const EVENTS_PER_JOB: usize = 500;

type Seen = (Position, JobId, u64);

/// Follow the feed after `after` with `filter`, sending each event on; when
/// `hold` is given, stop after the first event until it turns true.
fn follow(
    store: &Store,
    after: Position,
    filter: FeedFilter,
    mut hold: Option<watch::Receiver<bool>>,
) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = store.feed();
    tokio::spawn(async move {
        let mut stream = Box::pin(feed.subscribe(after, filter));
        while let Some(e) = stream.next().await {
            let e = e.expect("no read error");
            if tx.send((e.position, e.job_id, e.sequence)).is_err() {
                return;
            }
            if let Some(mut h) = hold.take() {
                let _ = h.wait_for(|written| *written).await;
            }
        }
    });
    rx
}

/// Every event of the database's feed that matches `filter`.
async fn stored(store: &Store, filter: &FeedFilter) -> Vec<Seen> {
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = store.feed().read(after, 5000, filter).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page.into_iter().map(|e| (e.position, e.job_id, e.sequence)));
    }
}

/// What `rx` delivers: exactly `expected`, and nothing after it.
async fn delivers(name: &str, rx: &mut mpsc::UnboundedReceiver<Seen>, expected: &[Seen]) {
    let mut got = Vec::with_capacity(expected.len());
    while got.len() < expected.len() {
        let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: stalled after {} events", got.len()))
            .expect("the follower goes on");
        got.push(e);
    }
    assert!(
        got == expected,
        "{name}: {} events, not the {} stored (first difference at {:?})",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b)
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(
        extra.is_err(),
        "{name}: an event beyond the stored ones: {extra:?}"
    );
}

async fn followers_see_the_feed_as_the_database_holds_it(t: &TestStore) {
    let total = WRITERS * EVENTS_PER_JOB;
    assert!(
        total > TAIL_EVENTS,
        "the tail must drop events in this test"
    );
    let head = t.store.feed().head().await.unwrap();
    let (written, hold) = watch::channel(false);
    // From the start of the feed (before where the tail begins), from the
    // head, one job only, and one that stops after its first event until
    // everything is written: by then the tail has dropped its position.
    let mut from_start = follow(&t.store, 0, FeedFilter::all(), None);
    let mut from_head = follow(&t.store, head, FeedFilter::all(), None);
    let mut one_job = follow(&t.store, head, FeedFilter::job("t2"), None);
    let mut lagging = follow(&t.store, head, FeedFilter::all(), Some(hold));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = t.store.clone();
        writers.push(tokio::spawn(async move {
            let job = JobId::new(format!("t{w}"));
            let events = long_history(job.as_str(), EVENTS_PER_JOB)[..EVENTS_PER_JOB].to_vec();
            let mut at = 0u64;
            let mut last = 0;
            for chunk in events.chunks(1 + w % 4) {
                last = store
                    .append_events(&job, at, chunk.to_vec(), meta())
                    .await
                    .expect("append")
                    .position;
                at += chunk.len() as u64;
            }
            last
        }));
    }
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.unwrap());
    }
    readable(&t.store, last).await;
    // Let the tail read to the end before the lagging follower goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    written.send_replace(true);

    let all = stored(&t.store, &FeedFilter::all()).await;
    let after_head: Vec<Seen> = all.iter().filter(|e| e.0 > head).cloned().collect();
    assert_eq!(after_head.len(), total);
    let t2: Vec<Seen> = stored(&t.store, &FeedFilter::job("t2"))
        .await
        .into_iter()
        .filter(|e| e.0 > head)
        .collect();
    assert_eq!(t2.len(), EVENTS_PER_JOB);
    delivers("from the start", &mut from_start, &all).await;
    delivers("from the head", &mut from_head, &after_head).await;
    delivers("one job", &mut one_job, &t2).await;
    delivers("lagging", &mut lagging, &after_head).await;
}

/// Receive from `seen` until an event at `position` or later; up to 5 s.
async fn reaches(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    position: Position,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), async {
        while seen.recv().await.expect("the follower runs").0 < position {}
    })
    .await
}

/// Once the tail holds every commit of this process, it reads the feed
/// again only when something wakes it (a commit of this process, another
/// process' notification) or at the poll interval, not on a timer of its
/// own while nothing can have changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_holding_its_process_commits_reads_only_when_woken() {
    let options = crate::StoreOptions {
        poll_interval: Duration::from_secs(60),
        ..super::support::test_options(None)
    };
    let clock = std::sync::Arc::new(loraflow_core::clock::ManualClock::at_epoch());
    let store = Store::open_with("memory:", super::support::services(clock), options)
        .await
        .unwrap();
    let crate::backend::Backend::Memory(log, _) = &store.shared().backend else {
        panic!("a memory store");
    };
    let mut seen = follow(&store, 0, FeedFilter::all(), None);
    let create = |job: &'static str| {
        let store = store.clone();
        async move {
            let id = JobId::new(job);
            let c = store
                .execute(
                    &id,
                    loraflow_core::job::JobCommand::Create(loraflow_core::job::CreateJob {
                        job_id: id.clone(),
                        spec: loraflow_core::job::canned::sample_spec(),
                    }),
                    meta(),
                )
                .await
                .unwrap();
            c.position.unwrap()
        }
    };
    let first = create("job-1").await;
    reaches(&mut seen, first)
        .await
        .expect("the first commit is followed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reads = log.reads();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        log.reads(),
        reads,
        "the tail read again with nothing to find"
    );
    // A commit still wakes it at once, long before the poll.
    let second = create("job-2").await;
    reaches(&mut seen, second)
        .await
        .expect("a commit wakes the tail");
    store.close().await;
}

on_every_backend!(followers_see_the_feed_as_the_database_holds_it);
