//! How a store is opened: pool sizes, polling, retries, page-token key,
//! audit keys.

use std::time::Duration;

use crate::keys::{AuditKey, PublicKey};

/// Options for [`Store::open_with`](crate::Store::open_with). `Default` suits
/// an engine process; tests shorten the poll interval.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most database connections the store opens (PostgreSQL and SQLite files).
    /// `None`: 24 for PostgreSQL (16 writers plus feed and projections), 8 for SQLite.
    pub max_connections: Option<u32>,
    /// How long `acquire` waits for a pooled connection before `Unavailable`.
    pub acquire_timeout: Duration,
    /// How often feed subscribers and the projection runner look for events
    /// written by other processes (this process' own commits wake them at once).
    pub poll_interval: Duration,
    /// Attempts in all for a retry-safe command that keeps conflicting.
    pub max_attempts: u32,
    /// PostgreSQL only: the schema to keep the tables in (created if missing,
    /// set as the connections' `search_path`). `None`: the URL's default.
    pub postgres_schema: Option<String>,
    /// Key for the MAC on list page tokens. Processes that share a database
    /// must share the key for tokens to survive a hop between them. `None`:
    /// a fixed built-in key (tokens are still checked for integrity and for
    /// the list they belong to, but a forger who reads this source can mint
    /// them; they only ever select rows the caller's filter allows).
    pub page_token_key: Option<Vec<u8>>,
    /// Events per projection transaction.
    pub projection_batch: usize,
    /// How long the webhook outbox waits, once it has caught up with the
    /// feed, before it reads again: the events written meanwhile share one
    /// transaction (in a burst, one instead of one per commit). A delivery
    /// starts up to this much later. `Duration::ZERO`: no wait.
    pub outbox_pace: Duration,
    /// The key that signs events, job heads and feed checkpoints (see
    /// `docs/audit.md`). `None`: for a SQLite file, the key in
    /// `<file>.audit-key`, created (mode 0600) on first open; otherwise a
    /// key made for this process, which dies with it (fine for memory
    /// stores and tests; a PostgreSQL store used by more than one process
    /// or run needs a configured key, or its jobs stop verifying).
    pub audit_key: Option<AuditKey>,
    /// Public keys whose signatures verify too: the keys used before a
    /// rotation. The signing key's own public key is always trusted.
    pub trusted_keys: Vec<PublicKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            max_attempts: 8,
            postgres_schema: None,
            page_token_key: None,
            projection_batch: 500,
            outbox_pace: Duration::from_millis(20),
            audit_key: None,
            trusted_keys: Vec::new(),
        }
    }
}
