//! How the store reaches PostgreSQL: without TLS over loopback unless the
//! URL (or `PGSSLMODE`) says otherwise.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::support::{Kind, TestStore, database_url, services, test_options};
use crate::backend::Backend;
use crate::backend::postgres::plain_on_loopback;
use crate::store::Store;

/// Whether the store would connect to `url` without TLS.
fn plain(url: &str, env_sslmode: bool) -> bool {
    let options = PgConnectOptions::from_str(url).expect("a PostgreSQL url");
    plain_on_loopback(url, &options, env_sslmode)
        .is_some_and(|o| matches!(o.get_ssl_mode(), PgSslMode::Disable))
}

#[test]
fn only_loopback_urls_that_name_no_tls_go_without_it() {
    for url in [
        "postgres://u@127.0.0.1:5432/db",
        "postgres://u@127.1.2.3/db",
        "postgres://u@localhost/db",
        "postgresql://u@LOCALHOST:5433/db?application_name=x",
        "postgres://u@[::1]:5432/db",
    ] {
        assert!(plain(url, false), "{url}");
        assert!(!plain(url, true), "{url} with PGSSLMODE set");
    }
    for url in [
        "postgres://u@db.example.com/db",
        "postgres://u@10.0.0.5/db",
        "postgres://u@127.0.0.1/db?sslmode=prefer",
        "postgres://u@127.0.0.1/db?sslmode=require",
        "postgres://u@localhost/db?ssl-mode=verify-full",
        "postgres://u@localhost/db?sslrootcert=/etc/ca.pem",
        "postgres://u@localhost/db?host=/var/run/postgresql",
        "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
    ] {
        assert!(!plain(url, false), "{url}");
    }
}

/// Whether the store's own connections use TLS, and whether the server
/// offers it at all.
async fn tls_of(store: &Store) -> (bool, bool) {
    let Backend::Postgres(pool) = &store.shared().backend else {
        unreachable!("a PostgreSQL store")
    };
    let ours: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl");
    let offered: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(pool)
        .await
        .expect("SHOW ssl");
    (ours, offered == "on")
}

#[tokio::test]
async fn a_loopback_store_goes_without_tls_unless_its_url_asks_for_it() {
    let Some(t) = TestStore::open(Kind::Postgres).await else {
        return;
    };
    let url = database_url();
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL");
    let (tls, offered) = tls_of(&t.store).await;
    if plain_on_loopback(&url, &options, std::env::var_os("PGSSLMODE").is_some()).is_some() {
        assert!(!tls, "{url}: the store's connections use TLS on loopback");
    }

    // Asked for in the URL, TLS is negotiated where the server offers it.
    if url.contains('?') {
        // A URL with options of its own: left as the operator gave it.
    } else {
        let asked = format!("{url}?sslmode=prefer");
        let again = Store::open_with(
            &asked,
            services(t.clock.clone()),
            test_options(t.schema().map(str::to_owned)),
        )
        .await
        .expect("open with sslmode=prefer");
        assert_eq!(tls_of(&again).await, (offered, offered), "{asked}");
        again.close().await;
    }
    t.cleanup().await;
}

/// A server that takes the connection and never answers: the store's open
/// gives up after its `acquire_timeout` with `Unavailable`, naming the host,
/// as the pool's own connections would.
#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_after_the_acquire_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let url = format!("postgres://u@127.0.0.1:{port}/db");
    let options = crate::options::StoreOptions {
        acquire_timeout: std::time::Duration::from_millis(300),
        ..test_options(None)
    };
    let clock = std::sync::Arc::new(loraflow_core::clock::ManualClock::at_epoch());
    let started = std::time::Instant::now();
    let refused = match Store::open_with(&url, services(clock), options).await {
        Ok(_) => panic!("a store opened on a server that never answers"),
        Err(e) => e,
    };
    assert!(
        matches!(refused, crate::Error::Unavailable(_)),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("127.0.0.1"), "{refused}");
    // Bounded by the timeout, not the system's TCP timeout (minutes).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    held.abort();
}
