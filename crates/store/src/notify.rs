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
//! A notification is a write transaction of its own (PostgreSQL gives it a
//! transaction id and flushes its commit), as costly to the server as a
//! small commit; so a store sends them only once it knows another store
//! listens. Each store, once its listener is up, says `hello:<id>`; a
//! store that hears another's hello answers `here:<id>`, and any message
//! of another store's (a hello, an answer or a commit's notification)
//! tells the hearer it has a peer. From then on it notifies after its
//! commits, for as long as it runs. A store on its own, the usual single
//! engine, sends none.
//!
//! Polling stays as the backstop: notifications sent while the listening
//! connection is being re-established are lost, as are commits made before
//! a new peer's hello is heard, and cost at most one
//! `StoreOptions::poll_interval`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::store::Shared;

/// The channel, as SQL: one per schema, within PostgreSQL's 63 bytes.
pub(crate) const CHANNEL: &str = "left('loraflow_feed_' || current_schema(), 63)";

/// What a notification says, from its payload: a commit's notification
/// carries the sender's id alone.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    Hello(&'a str),
    Here(&'a str),
    Committed(&'a str),
}

impl<'a> Message<'a> {
    fn parse(payload: &'a str) -> Self {
        if let Some(id) = payload.strip_prefix("hello:") {
            Message::Hello(id)
        } else if let Some(id) = payload.strip_prefix("here:") {
            Message::Here(id)
        } else {
            Message::Committed(payload)
        }
    }

    fn sender(&self) -> &'a str {
        match self {
            Message::Hello(id) | Message::Here(id) | Message::Committed(id) => id,
        }
    }
}

/// Whether another store listens on this store's channel: set by the
/// listener, read by the sender.
pub(crate) type Peers = Arc<AtomicBool>;

/// Send `payload` on the channel of `pool`'s schema.
async fn notify(pool: &PgPool, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SELECT pg_notify({CHANNEL}, $1)"))
        .bind(payload)
        .execute(pool)
        .await
        .map(drop)
}

/// Listen on `pool`'s channel until the store is dropped or closed, waking
/// the store's readers on each notification another store sent, and
/// telling the other stores this one is here.
pub(crate) fn listen(pool: PgPool, shared: Weak<Shared>, own: Arc<str>, peers: Peers) {
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
                notify(&pool, &format!("hello:{own}")).await?;
                loop {
                    let n = listener.recv().await?;
                    let message = Message::parse(n.payload());
                    if message.sender() == &*own {
                        continue;
                    }
                    peers.store(true, Ordering::Relaxed);
                    match message {
                        Message::Hello(_) => {
                            if let Err(e) = notify(&pool, &format!("here:{own}")).await {
                                // The newcomer learns of this store from its
                                // next notification instead.
                                tracing::debug!("PostgreSQL answer to a hello not sent: {e}");
                            }
                        }
                        Message::Here(_) => {}
                        Message::Committed(_) => {
                            if !wake(&shared) {
                                return Ok::<_, sqlx::Error>(());
                            }
                        }
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

/// Send a notification after this store's commits, once another store
/// listens (`peers`), until the store is dropped or closed; commits that
/// return while one is being sent share the next.
pub(crate) fn send(pool: PgPool, shared: Weak<Shared>, own: Arc<str>, peers: Peers) {
    let Some((stop, committed)) = shared
        .upgrade()
        .map(|s| (s.stop.clone(), s.committed_here.clone()))
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = committed.notified() => {}
            }
            if !peers.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = notify(&pool, &own).await {
                if matches!(e, sqlx::Error::PoolClosed) {
                    return;
                }
                // Other processes find the commit at their next poll.
                tracing::debug!("PostgreSQL notification not sent: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn a_payload_names_its_sender_and_what_it_says() {
        assert_eq!(Message::parse("hello:a1"), Message::Hello("a1"));
        assert_eq!(Message::parse("here:b2"), Message::Here("b2"));
        assert_eq!(Message::parse("c3"), Message::Committed("c3"));
        assert_eq!(Message::parse("here:b2").sender(), "b2");
    }
}
