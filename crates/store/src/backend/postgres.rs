//! PostgreSQL: production. postgres-es writes the events; this module creates
//! the schema and reads the feed and views with sqlx.
//!
//! # Global positions
//! Each event row records the id of the transaction that wrote it
//! (`tx_id xid8 DEFAULT pg_current_xact_id()`) and its place among that
//! transaction's rows (`tx_ord`, bound by this module's INSERT), and its
//! position is `tx_id << 20 | tx_ord`, a generated column. Rows written
//! without `tx_ord` (postgres-es' own INSERT, which names its columns, and
//! every row written before migration 8) take their sequence in its place:
//! `tx_id << 20 | sequence`, so one such transaction holds one job's events.
//! Numbering the rows of a transaction lets one transaction hold the
//! commits of many jobs whatever their sequences: a batch of leases is one
//! write, not one per sequence.
//!
//! A reader only reads rows whose transaction is older than the oldest one
//! still running (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): those
//! transactions have all ended, and every transaction that commits later has
//! a larger id, so its events get larger positions than anything already
//! read. Reading in position order therefore never skips an event.
//!
//! An identity column would not do: identity values are drawn while
//! transactions run, so a transaction with an older id can draw a larger
//! value than a younger one, commit first, and be read (and checkpointed)
//! before the younger one commits with the smaller value.
//!
//! The price: a long-running transaction anywhere in the cluster holds the
//! feed back until it ends, a job holds at most 2^20 - 1 events and a
//! transaction at most [`MAX_TX_EVENTS`].

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use loraflow_core::ids::JobId;
use loraflow_core::views::{JobListFilter, JobStatus, QueuedStep};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::types::Json;
use sqlx::{Connection, PgPool, Postgres, QueryBuilder, Row};

use cqrs_es::persist::{PersistenceError, SerializedEvent};

use super::{
    AGGREGATE, JobLog, LogRow, OpenJobs, checkpoint_from_row, head_from_row, log_from_rows,
    persistence_error, plain_label_key,
};
use crate::chain::{Checkpoint, Head};
use crate::error::{Error, Result};
use crate::event::{Position, RawEvent, StoredEvent};
use crate::feed::FeedFilter;
use crate::migrate::{Migration, Step};
use crate::options::StoreOptions;
use crate::projection::{
    JsonMap, NetQueue, Written, fold_batch, status_from_row, status_row, stored,
};
use crate::views::ListCursor;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events table (the postgres-es schema)",
        steps: &[Step::Sql(
            "CREATE TABLE IF NOT EXISTS events (
                aggregate_type text NOT NULL,
                aggregate_id   text NOT NULL,
                sequence       bigint CHECK (sequence >= 0) NOT NULL,
                event_type     text NOT NULL,
                event_version  text NOT NULL,
                payload        json NOT NULL,
                metadata       json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence)
            )",
        )],
    },
    Migration {
        version: 2,
        name: "global position and tenant of events",
        steps: &[
            Step::Sql(
                "ALTER TABLE events ADD COLUMN IF NOT EXISTS
                 tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()",
            ),
            Step::Sql(
                "ALTER TABLE events ADD COLUMN IF NOT EXISTS
                 global_position bigint GENERATED ALWAYS AS (((tx_id::text)::bigint << 20) | sequence) STORED",
            ),
            Step::Sql("CREATE UNIQUE INDEX IF NOT EXISTS events_global_position ON events (global_position)"),
            Step::Sql(
                "ALTER TABLE events ADD COLUMN IF NOT EXISTS
                 tenant text GENERATED ALWAYS AS (metadata->>'tenant') STORED",
            ),
            Step::Sql("CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, global_position)"),
        ],
    },
    Migration {
        version: 3,
        name: "views and projection checkpoints",
        steps: &[
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS job_status (
                    job_id        text PRIMARY KEY,
                    tenant        text NOT NULL,
                    state         text NOT NULL,
                    base_model    text NOT NULL,
                    engine        text NOT NULL,
                    created_us    bigint NOT NULL,
                    updated_us    bigint NOT NULL,
                    sequence      bigint NOT NULL,
                    last_position bigint NOT NULL,
                    payload       jsonb NOT NULL
                )",
            ),
            Step::Sql("CREATE INDEX IF NOT EXISTS job_status_list ON job_status (created_us DESC, job_id DESC)"),
            Step::Sql(
                "CREATE INDEX IF NOT EXISTS job_status_tenant ON job_status (tenant, created_us DESC, job_id DESC)",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS queue (
                    job_id   text NOT NULL,
                    step_id  text NOT NULL,
                    tenant   text NOT NULL,
                    priority integer NOT NULL,
                    position bigint NOT NULL,
                    payload  jsonb NOT NULL,
                    PRIMARY KEY (job_id, step_id)
                )",
            ),
            Step::Sql("CREATE INDEX IF NOT EXISTS queue_order ON queue (priority DESC, position)"),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS projection_checkpoints (
                    name     text PRIMARY KEY,
                    position bigint NOT NULL
                )",
            ),
        ],
    },
    Migration {
        version: 4,
        name: "webhook subscriptions, outbox and delivery log",
        steps: crate::webhooks::postgres::SCHEMA,
    },
    Migration {
        version: 5,
        name: "signed audit log: job heads and feed checkpoints",
        steps: &[
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS job_heads (
                    job_id   text PRIMARY KEY,
                    sequence bigint NOT NULL,
                    link     text NOT NULL,
                    key_id   text NOT NULL,
                    sig      text NOT NULL
                )",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS audit_checkpoints (
                    position  bigint PRIMARY KEY,
                    root      text NOT NULL,
                    key_id    text NOT NULL,
                    sig       text NOT NULL,
                    signed_at text NOT NULL
                )",
            ),
        ],
    },
    Migration {
        version: 6,
        name: "named records (registered base models, upload sessions)",
        steps: crate::records::POSTGRES_SCHEMA,
    },
    Migration {
        version: 7,
        name: "open jobs: the index a restarted scheduler starts from",
        steps: &[
            Step::Sql("CREATE TABLE IF NOT EXISTS open_jobs (job_id text PRIMARY KEY)"),
            Step::Sql(
                "INSERT INTO open_jobs (job_id)
                 SELECT DISTINCT aggregate_id FROM events e WHERE NOT EXISTS (
                     SELECT 1 FROM events t WHERE t.aggregate_type = e.aggregate_type
                        AND t.aggregate_id = e.aggregate_id
                        AND t.event_type IN ('JobPublished', 'JobFailed', 'JobCancelled', 'JobRejected'))
                 ON CONFLICT DO NOTHING",
            ),
        ],
    },
    Migration {
        version: 8,
        name: "global position by row within a transaction (tx_ord)",
        // Rewrites the events table once (a stored generated column's
        // expression can only change by dropping and adding it again);
        // rows already written keep their positions, as `tx_ord` is null.
        steps: &[
            Step::Sql(
                "ALTER TABLE events ADD COLUMN IF NOT EXISTS
                 tx_ord integer CHECK (tx_ord >= 0 AND tx_ord < 1048576)",
            ),
            Step::Sql("ALTER TABLE events DROP COLUMN IF EXISTS global_position"),
            Step::Sql(
                "ALTER TABLE events ADD COLUMN
                 global_position bigint GENERATED ALWAYS AS
                     (((tx_id::text)::bigint << 20) | COALESCE(tx_ord, sequence)) STORED",
            ),
            Step::Sql("CREATE UNIQUE INDEX IF NOT EXISTS events_global_position ON events (global_position)"),
            Step::Sql("CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, global_position)"),
        ],
    },
    Migration {
        version: 9,
        name: "job statuses: what creation fixes in a column of its own",
        // Rewrites each status row once; the views' updates after it write
        // only `payload` (see `projection::status_row`).
        steps: &[
            Step::Sql("ALTER TABLE job_status ADD COLUMN IF NOT EXISTS fixed jsonb"),
            Step::Sql(
                "UPDATE job_status
                    SET fixed = jsonb_build_object('spec', payload->'spec', 'params', payload->'params'),
                        payload = payload - 'spec' - 'params'
                  WHERE fixed IS NULL",
            ),
        ],
    },
    Migration {
        version: 10,
        name: "job statuses: room on each page for updates in place",
        // A status row is updated at every step of its job, and no indexed
        // column changes: with room on its page, PostgreSQL writes the new
        // version there and touches no index (a heap-only tuple). Pages
        // written from now on keep 30% free; existing ones fill as before
        // until they are rewritten.
        steps: &[Step::Sql("ALTER TABLE job_status SET (fillfactor = 70)")],
    },
];

/// The most events one transaction writes: a position holds the row's
/// place in its transaction in its low 20 bits.
pub(crate) const MAX_TX_EVENTS: usize = 1 << 20;

/// The feed's horizon: positions below it belong to ended transactions.
const HORIZON: &str = "((pg_snapshot_xmin(pg_current_snapshot())::text)::bigint << 20)";

fn plain_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// A pool on `url`; with a schema in `options`, the schema is created if
/// missing and every connection's `search_path` is set to it.
pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Pools> {
    let mut connect = PgConnectOptions::from_str(url).map_err(|e| Error::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
        accepted: crate::url::ACCEPTED_URLS,
    })?;
    if let Some(schema) = &options.postgres_schema
        && !plain_identifier(schema)
    {
        return Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: format!("schema {schema:?} must be lower-case letters, digits and '_'"),
            accepted: crate::url::ACCEPTED_URLS,
        });
    }
    let env_sslmode = std::env::var_os("PGSSLMODE").is_some();
    // The first connection, where one is needed before the pool's: to try
    // loopback without TLS, or to create the schema.
    let first = match plain_on_loopback(url, &connect, env_sslmode) {
        Some(plain) => match first_connection(&plain, options).await {
            Ok(conn) => {
                connect = plain;
                Some(conn)
            }
            Err(Error::Database(e)) if refused_without_tls(&*e) => {
                tracing::info!(
                    "PostgreSQL at {} refused a connection without TLS ({e}); connecting with TLS",
                    connect.get_host()
                );
                Some(first_connection(&connect, options).await?)
            }
            Err(e) => return Err(e),
        },
        None if options.postgres_schema.is_some() => {
            Some(first_connection(&connect, options).await?)
        }
        None => None,
    };
    if let Some(mut conn) = first {
        if let Some(schema) = &options.postgres_schema {
            // Two processes creating it at once: one of them may see a
            // unique violation on the catalogue; the schema exists either way.
            if let Err(e) = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await
            {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(schema)
                .fetch_one(&mut conn)
                .await?;
                if !exists {
                    return Err(e.into());
                }
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        conn.close().await?;
    }
    // Every transaction of this backend begins through [`begin`], so a
    // connection that sqlx does not count as in a transaction is not in one.
    // A connection is pinged before use only after an idle spell (when the
    // server may have closed it, or restarted): sqlx's default pings before
    // every use, a round trip per statement.
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.unwrap_or(24))
        .after_release(|conn, _| Box::pin(async move { Ok(!super::abandoned(conn)) }))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .acquire_timeout(options.acquire_timeout);
    // postgres-es begins its own transactions (only on paths the engine
    // does not take: cqrs-es' snapshots); its pool asks the server whether
    // a connection coming back is inside one, and connects on first use.
    let checked = PgPoolOptions::new()
        .max_connections(4)
        .after_release(|conn, _| Box::pin(async move { Ok(!abandoned(conn).await?) }))
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(connect.clone());
    Ok(Pools {
        main: pool.connect_with(connect).await?,
        checked,
    })
}

/// `connect` without TLS, when `url` reaches the server over loopback TCP
/// (a loopback address or `localhost`) and neither it nor `PGSSLMODE` says
/// anything of TLS; `None` otherwise. sqlx's default (`prefer`) negotiates
/// TLS without checking the server's certificate, which on loopback keeps
/// out only those who can read the host's loopback traffic, and they can
/// read the server's memory too; it costs a step 5-10% of its CPU
/// (docs/scheduler.md). A server that takes loopback connections only
/// over TLS is connected to with TLS after all (see [`connect`]).
pub(crate) fn plain_on_loopback(
    url: &str,
    connect: &PgConnectOptions,
    env_sslmode: bool,
) -> Option<PgConnectOptions> {
    let named = url::Url::parse(url)
        .ok()?
        .query_pairs()
        .any(|(k, _)| k.to_ascii_lowercase().starts_with("ssl"));
    // A Unix socket has no TLS to begin with.
    if named || env_sslmode || connect.get_socket().is_some() {
        return None;
    }
    let host = connect.get_host();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| connect.clone().ssl_mode(PgSslMode::Disable))
}

/// One connection, given up after the store's `acquire_timeout` (as the
/// pool's are): a host that never answers is `Unavailable`, not a wait of
/// the system's TCP timeout.
async fn first_connection(
    connect: &PgConnectOptions,
    options: &StoreOptions,
) -> Result<sqlx::PgConnection> {
    match tokio::time::timeout(
        options.acquire_timeout,
        sqlx::PgConnection::connect_with(connect),
    )
    .await
    {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(Error::Unavailable(
            format!(
                "PostgreSQL at {} did not accept a connection within {:?}",
                connect.get_host(),
                options.acquire_timeout
            )
            .into(),
        )),
    }
}

/// Whether the server turned a connection away for want of TLS: its
/// `pg_hba.conf` has no entry for it (`28000`, "... no encryption").
fn refused_without_tls(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .is_some_and(|d| d.code().as_deref() == Some("28000"))
}

/// How long a pooled connection may sit idle before it is pinged on its
/// next use.
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The pools of one store: `main` for everything the store sends itself,
/// `checked` for postgres-es' repository.
pub(crate) struct Pools {
    pub main: PgPool,
    pub checked: PgPool,
}

/// Whether a connection comes back to postgres-es' pool inside a
/// transaction nobody owns (see [`begin`]). The server knows: in a
/// transaction begun earlier, `now()` (its start) is before this
/// statement's own timestamp.
async fn abandoned(conn: &mut sqlx::PgConnection) -> std::result::Result<bool, sqlx::Error> {
    if super::abandoned(conn) {
        return Ok(true);
    }
    // The simple query protocol: with the extended one, the statement's
    // timestamp is taken after the implicit transaction began, and the two
    // differ even outside any transaction.
    // (A query without arguments goes out as a simple query.)
    let row = sqlx::Executor::fetch_one(conn, "SELECT now() <> statement_timestamp()").await?;
    row.try_get(0)
}

/// Drop a schema and everything in it (tests clean up with it).
#[cfg(test)]
pub(crate) async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    if !plain_identifier(schema) {
        return Ok(());
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

const EVENT_COLUMNS: &str =
    "global_position, aggregate_id, sequence, event_type, event_version, payload, metadata";

fn raw(row: &PgRow) -> Result<RawEvent> {
    Ok(RawEvent {
        position: row.try_get::<i64, _>(0)? as Position,
        job_id: JobId::new(row.try_get::<String, _>(1)?),
        sequence: row.try_get::<i64, _>(2)? as u64,
        event_type: row.try_get(3)?,
        event_version: row.try_get(4)?,
        payload: row.try_get(5)?,
        metadata: row.try_get(6)?,
    })
}

pub(crate) async fn read_events(
    pool: &PgPool,
    after: Position,
    limit: usize,
    filter: &FeedFilter,
) -> Result<Vec<RawEvent>> {
    // Until autovacuum has analysed a fast-growing table, the planner ANDs
    // a scan of the whole primary key (for `aggregate_type = $1`) into each
    // feed read. Written as an expression, the term is only a filter and
    // the position (or tenant) index serves the read; a job filter keeps
    // the primary key, which holds the job's events together.
    let aggregate_type = if filter.job.is_some() {
        "aggregate_type"
    } else {
        "(aggregate_type || '')"
    };
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {aggregate_type} = "
    ));
    q.push_bind(AGGREGATE);
    q.push(" AND global_position > ").push_bind(after as i64);
    q.push(format!(" AND global_position < {HORIZON}"));
    if let Some(t) = &filter.tenant {
        q.push(" AND tenant = ").push_bind(t.as_str());
    }
    if let Some(j) = &filter.job {
        q.push(" AND aggregate_id = ").push_bind(j.as_str());
    }
    q.push(" ORDER BY global_position LIMIT ")
        .push_bind(limit as i64);
    q.build().fetch_all(pool).await?.iter().map(raw).collect()
}

pub(crate) async fn head(pool: &PgPool) -> Result<Position> {
    let head: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(global_position), 0) FROM events WHERE global_position < {HORIZON}"
    ))
    .fetch_one(pool)
    .await?;
    Ok(head as Position)
}

pub(crate) async fn written(pool: &PgPool) -> Result<Position> {
    let written: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(written as Position)
}

pub(crate) async fn job_events(pool: &PgPool, job: &JobId) -> Result<Vec<RawEvent>> {
    sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
    ))
    .bind(AGGREGATE)
    .bind(job.as_str())
    .fetch_all(pool)
    .await?
    .iter()
    .map(raw)
    .collect()
}

/// Several jobs' commits in one statement (one transaction): postgres-es'
/// statement and values, all rows in one INSERT, with the open-jobs entries
/// and the heads' upserts in the same statement (one round trip, where
/// postgres-es sends BEGIN, an INSERT per event and COMMIT) and `RETURNING`
/// the generated positions; each commit's last position, in order. The jobs must be distinct and hold at most
/// [`MAX_TX_EVENTS`] events together (see [`transaction_groups`]).
pub(crate) async fn insert_many(
    pool: &PgPool,
    aggregate_type: &str,
    commits: &[(&[SerializedEvent], &Head)],
) -> Result<Vec<Position>, PersistenceError> {
    insert_statement(pool, aggregate_type, commits).await
}

/// Commits that may share a transaction, as ranges of consecutive
/// indices, given each one's number of events: as many as fit in
/// [`MAX_TX_EVENTS`] rows (a commit larger than that alone; a job's events
/// never reach it). Any batch the engine writes is one group.
pub(crate) fn transaction_groups(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && rows + n > MAX_TX_EVENTS {
            groups.push(start..i);
            (start, rows) = (i, 0);
        }
        rows += n;
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    groups
}

/// The insert of a group of commits: their events, the open-jobs index
/// and their heads, in one statement. The JSON goes in as `jsonb` and is
/// stored as `json` (its text as `jsonb` writes it), as a `jsonb`
/// parameter of a `VALUES` list was.
const INSERT_EVENTS: &str = "WITH ins AS (
        INSERT INTO events
            (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tx_ord)
        SELECT $1, r.id, r.seq, r.ty, r.ver, r.payload::json, r.meta::json, r.ord
          FROM unnest($2::text[], $3::int8[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::int4[])
               AS r(id, seq, ty, ver, payload, meta, ord)
        RETURNING aggregate_id, global_position),
    opened AS (INSERT INTO open_jobs (job_id) SELECT unnest($9::text[]) ON CONFLICT DO NOTHING),
    closed AS (DELETE FROM open_jobs WHERE job_id = ANY($10::text[])),
    head AS (
        INSERT INTO job_heads (job_id, sequence, link, key_id, sig)
        SELECT * FROM unnest($11::text[], $12::int8[], $13::text[], $14::text[], $15::text[])
        ON CONFLICT (job_id) DO UPDATE SET sequence = excluded.sequence, link = excluded.link,
            key_id = excluded.key_id, sig = excluded.sig)
    SELECT aggregate_id, global_position FROM ins";

async fn insert_statement(
    pool: &PgPool,
    aggregate_type: &str,
    commits: &[(&[SerializedEvent], &Head)],
) -> Result<Vec<Position>, PersistenceError> {
    if commits.is_empty() || commits.iter().any(|(events, _)| events.is_empty()) {
        return Err(PersistenceError::UnknownError(
            "an insert needs at least one event per job".into(),
        ));
    }
    let rows: usize = commits.iter().map(|(events, _)| events.len()).sum();
    if rows > MAX_TX_EVENTS {
        return Err(PersistenceError::UnknownError(
            format!("{rows} events in one transaction; the limit is {MAX_TX_EVENTS}").into(),
        ));
    }
    // Every column goes in as one array, so the statement's text is the
    // same whatever the rows: PostgreSQL parses and plans it once per
    // connection, and sqlx prepares it once. A `VALUES` list with a
    // placeholder per value made a new statement for each number of rows
    // (a parse, a plan and sqlx's extra round trip to prepare it at most
    // commits of a burst), and the many shapes pushed the views'
    // statements out of sqlx's cache. `tx_ord` numbers the rows in the
    // order given: a job's events in sequence order, so the feed keeps
    // each job's order.
    let events: Vec<&SerializedEvent> = commits
        .iter()
        .flat_map(|(events, _)| events.iter())
        .collect();
    // The open-jobs index moves in the same statement (one transaction).
    let (opens, closes) = OpenJobs::of_group(commits.iter().copied());
    let heads: Vec<&Head> = commits.iter().map(|(_, head)| *head).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(INSERT_EVENTS)
        .bind(aggregate_type)
        .bind(
            events
                .iter()
                .map(|e| e.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.sequence as i64).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.event_version.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
        .bind((0..events.len() as i32).collect::<Vec<_>>())
        .bind(opens)
        .bind(closes)
        .bind(heads.iter().map(|h| h.job_id.as_str()).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.sequence as i64).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.link.as_str()).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.key_id.as_str()).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.sig.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await
        .map_err(persistence_error)?;
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (job, position) in &rows {
        let p = last.entry(job.as_str()).or_insert(*position);
        *p = (*p).max(*position);
    }
    commits
        .iter()
        .map(|(_, head)| {
            last.get(head.job_id.as_str())
                .map(|p| *p as Position)
                .ok_or_else(|| {
                    PersistenceError::UnknownError(
                        format!("the insert returned no position for job {}", head.job_id).into(),
                    )
                })
        })
        .collect()
}

/// The events at or before `upto` of the jobs in `open_jobs`, in feed
/// order: one probe of the primary key per open job, however long the
/// finished history. The job ids go in as an array (`= ANY`), which the
/// planner serves from the primary key whatever the statistics say: as a
/// join (even a `LATERAL` one, which PostgreSQL flattens into a plain join),
/// a table without statistics, as it is after a bulk write, was planned as
/// a hash join over every event (1.2 s with 1,000,000 events).
pub(crate) const OPEN_JOB_EVENTS: &str =
    "SELECT global_position, aggregate_id, sequence, event_type, event_version, payload, metadata
       FROM events
      WHERE aggregate_type = $1 AND aggregate_id = ANY(ARRAY(SELECT job_id FROM open_jobs))
        AND global_position <= $2
      ORDER BY global_position";

pub(crate) async fn open_job_events(pool: &PgPool, upto: Position) -> Result<Vec<RawEvent>> {
    sqlx::query(OPEN_JOB_EVENTS)
        .bind(AGGREGATE)
        .bind(upto as i64)
        .fetch_all(pool)
        .await?
        .iter()
        .map(raw)
        .collect()
}

/// A job's events in sequence order and its head, read in one statement
/// (one snapshot).
pub(crate) async fn job_log(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<JobLog> {
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT 0::bigint, sequence, global_position, event_type, event_version, payload::text, metadata::text
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
         UNION ALL
         SELECT 1::bigint, sequence, 0::bigint, link, key_id, sig, '' FROM job_heads WHERE job_id = $2
         ORDER BY 1, 2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await?;
    log_from_rows(aggregate_id, rows)
}

pub(crate) async fn heads(pool: &PgPool) -> Result<Vec<Head>> {
    let rows: Vec<(String, i64, String, String, String)> =
        sqlx::query_as("SELECT job_id, sequence, link, key_id, sig FROM job_heads ORDER BY job_id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(head_from_row).collect())
}

pub(crate) async fn checkpoints(pool: &PgPool) -> Result<Vec<Checkpoint>> {
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT position, root, key_id, sig, signed_at FROM audit_checkpoints ORDER BY position",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(checkpoint_from_row).collect())
}

pub(crate) async fn insert_checkpoint(pool: &PgPool, c: &Checkpoint) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (position, root, key_id, sig, signed_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (position) DO NOTHING",
    )
    .bind(c.position as i64)
    .bind(c.root.as_str())
    .bind(c.key_id.as_str())
    .bind(c.sig.as_str())
    .bind(c.signed_at.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `schema` (or the URL's default) has an events table, asked on
/// a connection of its own so that nothing is created (an audit never
/// creates a store).
pub(crate) async fn events_table_exists(url: &str, schema: Option<&str>) -> Result<bool> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let table = match schema {
        Some(s) => format!("{s}.events"),
        None => "events".to_owned(),
    };
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(found.is_some())
}

/// A transaction on `pool` whose `BEGIN` runs to its answer even when the
/// caller is dropped meanwhile. sqlx 0.8 counts a transaction only once
/// its `BEGIN` has been answered, so a future dropped in between would
/// hand the connection back to the pool inside a transaction sqlx does not
/// know of, and the next caller's statements would run inside it and
/// never commit. Run on a task of its own, the `BEGIN` is always answered;
/// a transaction dropped after that is rolled back by sqlx before the
/// connection's next use. Every transaction of this backend starts here,
/// so the pool need not ask the server about each connection it takes
/// back (a round trip per statement, a quarter of all statements sent).
pub(crate) async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|e| Error::Database(Box::new(e)))?
        .map_err(Into::into)
}

pub(crate) async fn checkpoint(pool: &PgPool, name: &str) -> Result<Position> {
    let p: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(p.unwrap_or(0) as Position)
}

pub(crate) async fn apply_views(
    pool: &PgPool,
    name: &str,
    from: Position,
    events: &[StoredEvent],
    written: &mut Written,
) -> Result<Position> {
    let mut tx = begin(pool).await?;
    let cp = lock_checkpoint(&mut tx, name).await?;
    if cp < from {
        // Reset meanwhile: this batch starts past the checkpoint.
        tx.commit().await?;
        return Ok(cp);
    }
    let events: Vec<&StoredEvent> = events.iter().filter(|e| e.position > cp).collect();
    let Some(last) = events.last().map(|e| e.position) else {
        tx.commit().await?;
        return Ok(cp);
    };
    // The jobs' statuses: as this process wrote them when the checkpoint
    // says they are current, the others read.
    let known = written.at(cp);
    let mut current: HashMap<JobId, Option<JobStatus>> = HashMap::new();
    let mut unread: Vec<&str> = Vec::new();
    for e in &events {
        if !current.contains_key(&e.job_id) {
            let status = known.get(&e.job_id).cloned();
            if status.is_none() {
                unread.push(e.job_id.as_str());
            }
            current.insert(e.job_id.clone(), status);
        }
    }
    if !unread.is_empty() {
        let rows: Vec<(String, Json<JsonMap>, Option<Json<JsonMap>>)> =
            sqlx::query_as("SELECT job_id, payload, fixed FROM job_status WHERE job_id = ANY($1)")
                .bind(&unread)
                .fetch_all(&mut *tx)
                .await?;
        for (id, Json(payload), fixed) in rows {
            let status = status_from_row(payload, fixed.map(|Json(f)| f))?;
            current.insert(JobId::new(id), Some(status));
        }
    }
    let stored = stored(&current);
    let (statuses, changes) = fold_batch(current, events.into_iter());
    // A few set statements per batch, whatever its size (one per row made
    // the views' transaction the longest part of a busy `create_job`).
    write_statuses(&mut tx, statuses.values(), &stored).await?;
    let net = NetQueue::of(changes);
    if !net.cleared.is_empty() {
        let jobs: Vec<&str> = net.cleared.iter().map(JobId::as_str).collect();
        sqlx::query("DELETE FROM queue WHERE job_id = ANY($1)")
            .bind(jobs)
            .execute(&mut *tx)
            .await?;
    }
    if !net.removed.is_empty() {
        let (jobs, steps): (Vec<&str>, Vec<&str>) = net
            .removed
            .iter()
            .map(|(j, s)| (j.as_str(), s.as_str()))
            .unzip();
        sqlx::query(
            "DELETE FROM queue WHERE (job_id, step_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(jobs)
        .bind(steps)
        .execute(&mut *tx)
        .await?;
    }
    if !net.upserted.is_empty() {
        let q = &net.upserted;
        let payloads = q
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::serialization(format!("a queue entry: {e}")))?;
        sqlx::query(
            "INSERT INTO queue (job_id, step_id, tenant, priority, position, payload)
             SELECT j, s, t, p, pos, payload::jsonb
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::text[])
                    AS r(j, s, t, p, pos, payload)
             ON CONFLICT (job_id, step_id) DO UPDATE SET
                tenant = excluded.tenant, priority = excluded.priority,
                position = excluded.position, payload = excluded.payload",
        )
        .bind(q.iter().map(|q| q.job_id.as_str()).collect::<Vec<_>>())
        .bind(q.iter().map(|q| q.step_id.as_str()).collect::<Vec<_>>())
        .bind(q.iter().map(|q| q.tenant.as_str()).collect::<Vec<_>>())
        .bind(q.iter().map(|q| q.priority).collect::<Vec<i32>>())
        .bind(q.iter().map(|q| q.position as i64).collect::<Vec<_>>())
        .bind(payloads)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE projection_checkpoints SET position = $1 WHERE name = $2")
        .bind(last as i64)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    written.wrote(last, statuses.into_values());
    Ok(last)
}

/// Upsert job statuses in one statement; `stored`: the jobs that have a
/// row already, whose fixed part is not written again.
async fn write_statuses<'a>(
    tx: &mut sqlx::PgConnection,
    statuses: impl Iterator<Item = &'a JobStatus>,
    stored: &HashSet<JobId>,
) -> Result<()> {
    let statuses: Vec<&JobStatus> = statuses.collect();
    if statuses.is_empty() {
        return Ok(());
    }
    let (payloads, fixed): (Vec<String>, Vec<Option<String>>) = statuses
        .iter()
        .map(|s| status_row(s, !stored.contains(&s.job_id)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let col = |f: fn(&JobStatus) -> &str| statuses.iter().map(|s| f(s)).collect::<Vec<_>>();
    let num = |f: fn(&JobStatus) -> i64| statuses.iter().map(|s| f(s)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO job_status
            (job_id, tenant, state, base_model, engine, created_us, updated_us, sequence, last_position, payload, fixed)
         SELECT j, t, st, b, e, c, u, sq, lp, payload::jsonb, fixed::jsonb
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::text[])
                AS r(j, t, st, b, e, c, u, sq, lp, payload, fixed)
         ON CONFLICT (job_id) DO UPDATE SET
            tenant = excluded.tenant, state = excluded.state, base_model = excluded.base_model,
            engine = excluded.engine, created_us = excluded.created_us, updated_us = excluded.updated_us,
            sequence = excluded.sequence, last_position = excluded.last_position, payload = excluded.payload",
    )
    .bind(col(|s| s.job_id.as_str()))
    .bind(col(|s| s.tenant.as_str()))
    .bind(col(|s| s.state.as_str()))
    .bind(col(|s| s.base_model.as_str()))
    .bind(col(|s| s.engine.as_str()))
    .bind(num(|s| s.created_at.timestamp_micros()))
    .bind(num(|s| s.updated_at.timestamp_micros()))
    .bind(num(|s| s.sequence as i64))
    .bind(num(|s| s.last_position as i64))
    .bind(payloads)
    .bind(fixed)
    .execute(tx)
    .await?;
    Ok(())
}

/// The checkpoint `name` (0 if it has none yet), its row locked until `tx`
/// ends: the upsert writes the row as it is, so a second runner waits,
/// then sees the new checkpoint.
pub(crate) async fn lock_checkpoint(tx: &mut sqlx::PgConnection, name: &str) -> Result<Position> {
    let cp: i64 = sqlx::query_scalar(
        "INSERT INTO projection_checkpoints AS c (name, position) VALUES ($1, 0)
         ON CONFLICT (name) DO UPDATE SET position = c.position
         RETURNING position",
    )
    .bind(name)
    .fetch_one(tx)
    .await?;
    Ok(cp as Position)
}

pub(crate) async fn reset_views(pool: &PgPool, name: &str) -> Result<()> {
    let mut tx = begin(pool).await?;
    // Lock the checkpoint first so a running projection waits for the reset.
    lock_checkpoint(&mut tx, name).await?;
    sqlx::query("DELETE FROM job_status")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM queue").execute(&mut *tx).await?;
    sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn job_status(pool: &PgPool, job: &JobId) -> Result<Option<JobStatus>> {
    let row: Option<(Json<JsonMap>, Option<Json<JsonMap>>)> =
        sqlx::query_as("SELECT payload, fixed FROM job_status WHERE job_id = $1")
            .bind(job.as_str())
            .fetch_optional(pool)
            .await?;
    row.map(|(Json(p), f)| status_from_row(p, f.map(|Json(f)| f)))
        .transpose()
}

pub(crate) async fn list_jobs(
    pool: &PgPool,
    filter: &JobListFilter,
    after: Option<&ListCursor>,
    limit: usize,
) -> Result<Vec<JobStatus>> {
    if !filter.labels.keys().all(|k| plain_label_key(k)) {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<Postgres>::new("SELECT payload, fixed FROM job_status WHERE true");
    if let Some(t) = &filter.tenant {
        q.push(" AND tenant = ").push_bind(t.as_str());
    }
    if let Some(s) = filter.state {
        q.push(" AND state = ").push_bind(s.as_str());
    }
    if let Some(m) = &filter.base_model {
        q.push(" AND base_model = ").push_bind(m.as_str());
    }
    if let Some(e) = filter.engine {
        q.push(" AND engine = ").push_bind(e.as_str());
    }
    for (k, v) in &filter.labels {
        q.push(" AND payload->'labels'->>")
            .push_bind(k.as_str())
            .push(" = ")
            .push_bind(v.as_str());
    }
    if let Some(c) = after {
        q.push(" AND (created_us, job_id) < (")
            .push_bind(c.created_us)
            .push(", ")
            .push_bind(c.job_id.as_str())
            .push(")");
    }
    q.push(" ORDER BY created_us DESC, job_id DESC LIMIT ")
        .push_bind(limit as i64);
    let rows: Vec<(Json<JsonMap>, Option<Json<JsonMap>>)> =
        q.build_query_as().fetch_all(pool).await?;
    rows.into_iter()
        .map(|(Json(p), f)| status_from_row(p, f.map(|Json(f)| f)))
        .collect()
}

pub(crate) async fn queue(pool: &PgPool) -> Result<Vec<QueuedStep>> {
    let rows: Vec<Json<QueuedStep>> =
        sqlx::query_scalar("SELECT payload FROM queue ORDER BY priority DESC, position")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|Json(s)| s).collect())
}

/// Write one event row as it is given, without the store's metadata or
/// checks (tests plant old or tampered events this way).
#[cfg(test)]
pub(crate) async fn insert_raw(pool: &PgPool, e: &RawEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(AGGREGATE)
    .bind(e.job_id.as_str())
    .bind(e.sequence as i64)
    .bind(&e.event_type)
    .bind(&e.event_version)
    .bind(&e.payload)
    .bind(&e.metadata)
    .execute(pool)
    .await?;
    Ok(())
}
