//! Wake-ups across processes on PostgreSQL. After its commits a process
//! sends a notification (`pg_notify`) on a channel named after the store's
//! schema; every store open on that schema listens, and a notification from
//! another process wakes its feed subscriptions and projection runner at
//! once, as a commit of its own does. A process ignores its own
//! notifications (it woke its readers when it committed): each carries the
//! id of the store that sent it.
//!
//! The notification is sent by a task of its own, after the commit, one for
//! however many commits returned while the previous one was on its way:
//! NOTIFY inside the writing transaction would take PostgreSQL's global
//! notification lock at commit and hold it through the WAL flush, which
//! lines every writer's commit up behind the others' (no group commit).
//!
//! Polling stays as the backstop: notifications sent while the listening
//! connection is being re-established are lost, and cost at most one
//! `StoreOptions::poll_interval`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::store::Shared;

/// The channel, as SQL: one per schema, within PostgreSQL's 63 bytes.
pub(crate) const CHANNEL: &str = "left('loraflow_feed_' || current_schema(), 63)";

/// Listen on `pool`'s channel until the store is dropped or closed, waking
/// the store's readers on each notification another store sent.
pub(crate) fn listen(pool: PgPool, shared: Weak<Shared>, own: Arc<str>) {
    let Some(stop) = shared.upgrade().map(|s| s.stop.clone()) else {
        return;
    };
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            let run = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                let channel: String = sqlx::query_scalar(&format!("SELECT {CHANNEL}"))
                    .fetch_one(&mut listener)
                    .await?;
                listener.listen(&channel).await?;
                // Anything sent before the listener was up is read by the
                // readers' next poll; wake them now instead.
                wake(&shared);
                loop {
                    let n = listener.recv().await?;
                    if n.payload() != &*own && !wake(&shared) {
                        return Ok::<_, sqlx::Error>(());
                    }
                }
            };
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                ended = run => ended,
            };
            match ended {
                Ok(()) | Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(
                        "PostgreSQL notifications stopped ({e}); reconnecting, and polling meanwhile"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

/// Wake the store's readers; `false` once the store is gone.
fn wake(shared: &Weak<Shared>) -> bool {
    match shared.upgrade() {
        Some(s) => {
            s.commits.send_modify(|n| *n = n.wrapping_add(1));
            true
        }
        None => false,
    }
}

/// Send a notification after this store's commits until the store is
/// dropped or closed; commits that return while one is being sent share the
/// next.
pub(crate) fn send(pool: PgPool, shared: Weak<Shared>, own: Arc<str>) {
    let Some((stop, committed)) = shared
        .upgrade()
        .map(|s| (s.stop.clone(), s.committed_here.clone()))
    else {
        return;
    };
    let sql = format!("SELECT pg_notify({CHANNEL}, $1)");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = committed.notified() => {}
            }
            if let Err(e) = sqlx::query(&sql).bind(&*own).execute(&pool).await {
                if matches!(e, sqlx::Error::PoolClosed) {
                    return;
                }
                // Other processes find the commit at their next poll.
                tracing::debug!("PostgreSQL notification not sent: {e}");
            }
        }
    });
}
