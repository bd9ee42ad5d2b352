//! SQLite: the embedded default. sqlite-es writes the events; this module
//! creates the schema and reads the feed and views with sqlx.
//!
//! The global position is assigned inside the writing transaction
//! (`MAX + 1`): by the store's INSERT itself, and by a trigger for rows that
//! other writers (sqlite-es' own INSERT) leave without one. SQLite has one
//! writer at a time, so positions are dense and in commit order, and reading
//! `ORDER BY global_position` never skips an event. It is a real column (not the implicit `rowid`, which
//! `VACUUM` may renumber), so checkpoints stay valid.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use loraflow_core::ids::JobId;
use loraflow_core::views::{JobListFilter, JobStatus, QueueChange, QueuedStep};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use cqrs_es::persist::{PersistenceError, SerializedEvent};

use super::{
    AGGREGATE, JobLog, LogRow, OpenJobs, checkpoint_from_row, head_from_row, log_from_rows,
    persistence_error, plain_label_key,
};
use crate::chain::{Checkpoint, Head};
use crate::error::Result;
use crate::event::{Position, RawEvent, StoredEvent};
use crate::feed::FeedFilter;
use crate::migrate::{Migration, Step};
use crate::options::StoreOptions;
use crate::projection::{Written, fold_batch, status_from_row, status_row, stored};
use crate::views::ListCursor;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events table (the sqlite-es schema)",
        steps: &[Step::Sql(
            "CREATE TABLE IF NOT EXISTS events (
                aggregate_type TEXT NOT NULL,
                aggregate_id   TEXT NOT NULL,
                sequence       INTEGER CHECK (sequence >= 0) NOT NULL,
                event_type     TEXT NOT NULL,
                event_version  TEXT NOT NULL,
                payload        TEXT NOT NULL,
                metadata       TEXT NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence)
            ) STRICT",
        )],
    },
    Migration {
        version: 2,
        name: "global position and tenant of events",
        steps: &[
            Step::AddColumn {
                table: "events",
                column: "global_position",
                sql: "ALTER TABLE events ADD COLUMN global_position INTEGER",
            },
            // Rows written before this migration keep their insertion order.
            Step::Sql("UPDATE events SET global_position = rowid WHERE global_position IS NULL"),
            Step::Sql("CREATE UNIQUE INDEX IF NOT EXISTS events_global_position ON events (global_position)"),
            Step::Sql(
                "CREATE TRIGGER IF NOT EXISTS events_assign_global_position
                 AFTER INSERT ON events FOR EACH ROW WHEN NEW.global_position IS NULL
                 BEGIN
                     UPDATE events
                        SET global_position = (SELECT IFNULL(MAX(global_position), 0) + 1 FROM events)
                      WHERE rowid = NEW.rowid;
                 END",
            ),
            Step::AddColumn {
                table: "events",
                column: "tenant",
                sql: "ALTER TABLE events ADD COLUMN tenant TEXT
                      GENERATED ALWAYS AS (json_extract(metadata, '$.tenant')) VIRTUAL",
            },
            Step::Sql("CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, global_position)"),
        ],
    },
    Migration {
        version: 3,
        name: "views and projection checkpoints",
        steps: &[
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS job_status (
                    job_id        TEXT PRIMARY KEY,
                    tenant        TEXT NOT NULL,
                    state         TEXT NOT NULL,
                    base_model    TEXT NOT NULL,
                    engine        TEXT NOT NULL,
                    created_us    INTEGER NOT NULL,
                    updated_us    INTEGER NOT NULL,
                    sequence      INTEGER NOT NULL,
                    last_position INTEGER NOT NULL,
                    payload       TEXT NOT NULL
                ) STRICT",
            ),
            Step::Sql("CREATE INDEX IF NOT EXISTS job_status_list ON job_status (created_us DESC, job_id DESC)"),
            Step::Sql(
                "CREATE INDEX IF NOT EXISTS job_status_tenant ON job_status (tenant, created_us DESC, job_id DESC)",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS queue (
                    job_id   TEXT NOT NULL,
                    step_id  TEXT NOT NULL,
                    tenant   TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    position INTEGER NOT NULL,
                    payload  TEXT NOT NULL,
                    PRIMARY KEY (job_id, step_id)
                ) STRICT",
            ),
            Step::Sql("CREATE INDEX IF NOT EXISTS queue_order ON queue (priority DESC, position)"),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS projection_checkpoints (
                    name     TEXT PRIMARY KEY,
                    position INTEGER NOT NULL
                ) STRICT",
            ),
        ],
    },
    Migration {
        version: 4,
        name: "webhook subscriptions, outbox and delivery log",
        steps: crate::webhooks::sqlite::SCHEMA,
    },
    Migration {
        version: 5,
        name: "signed audit log: job heads and feed checkpoints",
        steps: &[
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS job_heads (
                    job_id   TEXT PRIMARY KEY,
                    sequence INTEGER NOT NULL,
                    link     TEXT NOT NULL,
                    key_id   TEXT NOT NULL,
                    sig      TEXT NOT NULL
                ) STRICT",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS audit_checkpoints (
                    position  INTEGER PRIMARY KEY,
                    root      TEXT NOT NULL,
                    key_id    TEXT NOT NULL,
                    sig       TEXT NOT NULL,
                    signed_at TEXT NOT NULL
                ) STRICT",
            ),
        ],
    },
    Migration {
        version: 6,
        name: "named records (registered base models, upload sessions)",
        steps: crate::records::SQLITE_SCHEMA,
    },
    Migration {
        version: 7,
        name: "open jobs: the index a restarted scheduler starts from",
        steps: &[
            Step::Sql("CREATE TABLE IF NOT EXISTS open_jobs (job_id TEXT PRIMARY KEY) STRICT"),
            Step::Sql(
                "INSERT OR IGNORE INTO open_jobs (job_id)
                 SELECT DISTINCT aggregate_id FROM events e WHERE NOT EXISTS (
                     SELECT 1 FROM events t WHERE t.aggregate_type = e.aggregate_type
                        AND t.aggregate_id = e.aggregate_id
                        AND t.event_type IN ('JobPublished', 'JobFailed', 'JobCancelled', 'JobRejected'))",
            ),
        ],
    },
    Migration {
        version: 8,
        name: "job statuses: what creation fixes in a column of its own",
        // Rewrites each status row once; the views' updates after it write
        // only `payload` (see `projection::status_row`).
        steps: &[
            Step::AddColumn {
                table: "job_status",
                column: "fixed",
                sql: "ALTER TABLE job_status ADD COLUMN fixed TEXT",
            },
            Step::Sql(
                "UPDATE job_status
                    SET fixed = json_object('spec', json_extract(payload, '$.spec'),
                                            'params', json_extract(payload, '$.params')),
                        payload = json_remove(payload, '$.spec', '$.params')
                  WHERE fixed IS NULL",
            ),
        ],
    },
];

/// A pool with sqlite-es' settings (WAL, `synchronous = NORMAL`): a file
/// created on first use with its parent folders, or an in-memory database.
/// No commit copies the write-ahead log into the database file
/// (`wal_autocheckpoint = 0`): the store's own task does, see
/// [`checkpoint_wal`].
pub(crate) async fn connect(path: Option<&Path>, options: &StoreOptions) -> Result<SqlitePool> {
    let connect = SqliteConnectOptions::new()
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        .pragma("wal_autocheckpoint", "0");
    // A file has no other end to hang up: no ping before each use.
    let pool = SqlitePoolOptions::new()
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false);
    let pool = match path {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| crate::Error::Unavailable(Box::new(e)))?;
            }
            pool.max_connections(options.max_connections.unwrap_or(8))
                .after_release(|conn, _| Box::pin(async move { Ok(!super::abandoned(conn)) }))
                .connect_with(connect.filename(path).create_if_missing(true))
                .await?
        }
        // One connection that never closes: an in-memory database lives as
        // long as its connection, and each connection would get its own.
        None => {
            pool.max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(connect.in_memory(true))
                .await?
        }
    };
    Ok(pool)
}

const EVENT_COLUMNS: &str =
    "global_position, aggregate_id, sequence, event_type, event_version, payload, metadata";

fn raw(row: &SqliteRow) -> Result<RawEvent> {
    let payload: String = row.try_get(5)?;
    let metadata: String = row.try_get(6)?;
    Ok(RawEvent {
        position: row.try_get::<i64, _>(0)? as Position,
        job_id: JobId::new(row.try_get::<String, _>(1)?),
        sequence: row.try_get::<i64, _>(2)? as u64,
        event_type: row.try_get(3)?,
        event_version: row.try_get(4)?,
        payload: serde_json::from_str(&payload)?,
        metadata: serde_json::from_str(&metadata)?,
    })
}

pub(crate) async fn read_events(
    pool: &SqlitePool,
    after: Position,
    limit: usize,
    filter: &FeedFilter,
) -> Result<Vec<RawEvent>> {
    feed_query(after, limit, filter)
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(raw)
        .collect()
}

/// The feed read. Without statistics (the store never runs ANALYZE) SQLite
/// would serve `aggregate_type = ?` from the primary key, i.e. read every
/// event and sort them: each read cost O(all events). The unary `+` keeps
/// the term out of index selection, so the position (or tenant) index is
/// used and a read costs what it returns. A job filter keeps the primary
/// key, which holds the job's events together.
fn feed_query(after: Position, limit: usize, filter: &FeedFilter) -> QueryBuilder<'_, Sqlite> {
    let aggregate_type = if filter.job.is_some() {
        "aggregate_type"
    } else {
        "+aggregate_type"
    };
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {aggregate_type} = "
    ));
    q.push_bind(AGGREGATE);
    q.push(" AND global_position > ").push_bind(after as i64);
    if let Some(t) = &filter.tenant {
        q.push(" AND tenant = ").push_bind(t.as_str());
    }
    if let Some(j) = &filter.job {
        q.push(" AND aggregate_id = ").push_bind(j.as_str());
    }
    q.push(" ORDER BY global_position LIMIT ")
        .push_bind(limit as i64);
    q
}

pub(crate) async fn head(pool: &SqlitePool) -> Result<Position> {
    let head: i64 = sqlx::query_scalar("SELECT IFNULL(MAX(global_position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(head as Position)
}

pub(crate) async fn job_events(pool: &SqlitePool, job: &JobId) -> Result<Vec<RawEvent>> {
    sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_type = ? AND aggregate_id = ? ORDER BY sequence"
    ))
    .bind(AGGREGATE)
    .bind(job.as_str())
    .fetch_all(pool)
    .await?
    .iter()
    .map(raw)
    .collect()
}

/// Several jobs' commits (each a job's events and its new head) in one
/// transaction: each one's last position, in order. A commit that fails
/// (a taken sequence) fails them all. Each event gets the next global
/// position (`MAX + 1`: SQLite has one writer at a time, so this is commit
/// order), which the trigger would otherwise set in a second write of the
/// row: sqlite-es' statement, plus the position.
pub(crate) async fn insert_many(
    pool: &SqlitePool,
    aggregate_type: &str,
    commits: &[(Vec<SerializedEvent>, Head)],
) -> Result<Vec<Position>, PersistenceError> {
    if commits.is_empty() || commits.iter().any(|(events, _)| events.is_empty()) {
        return Err(PersistenceError::UnknownError(
            "an insert needs at least one event per job".into(),
        ));
    }
    let mut tx = pool.begin().await.map_err(persistence_error)?;
    let positions = insert_in(&mut tx, aggregate_type, commits).await?;
    tx.commit().await.map_err(persistence_error)?;
    Ok(positions)
}

/// The commits' events, the open-jobs index and their heads in the
/// caller's transaction, each table in one statement whatever the number
/// of rows (the rows go in as one JSON array, read back by `json_each`):
/// sqlx hands every statement to the connection's own thread and waits
/// for its answer, so a statement per event made a busy moment's
/// transaction dozens of hand-offs. Each commit's last position.
async fn insert_in(
    tx: &mut sqlx::SqliteConnection,
    aggregate_type: &str,
    commits: &[(Vec<SerializedEvent>, Head)],
) -> Result<Vec<Position>, PersistenceError> {
    // The positions follow the largest one stored, in the order given (a
    // job's events in sequence order): the scalar subquery is evaluated
    // once, before the first row goes in.
    const INSERT: &str = "INSERT INTO events
            (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, global_position)
         SELECT ?, r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4, r.value ->> 5,
                (SELECT IFNULL(MAX(global_position), 0) FROM events) + r.key + 1
           FROM json_each(?) AS r
          ORDER BY r.key
         RETURNING global_position";
    // Each row a JSON array (a tuple serialises as one), written straight
    // from the events; payload and metadata go in as the text stored.
    let rows: Vec<_> = commits
        .iter()
        .flat_map(|(events, _)| events.iter())
        .map(|e| {
            (
                e.aggregate_id.as_str(),
                e.sequence,
                e.event_type.as_str(),
                e.event_version.as_str(),
                e.payload.to_string(),
                e.metadata.to_string(),
            )
        })
        .collect();
    let mut written: Vec<i64> = sqlx::query_scalar(INSERT)
        .bind(aggregate_type)
        .bind(json_text(&rows)?)
        .fetch_all(&mut *tx)
        .await
        .map_err(persistence_error)?;
    written.sort_unstable();
    let mut positions = Vec::with_capacity(commits.len());
    let mut end = 0;
    for (events, head) in commits {
        end += events.len();
        let last = written.get(end - 1).ok_or_else(|| {
            PersistenceError::UnknownError(
                format!("the insert returned no position for job {}", head.job_id).into(),
            )
        })?;
        positions.push(*last as Position);
    }
    let (opens, closes) = OpenJobs::of_group(
        commits
            .iter()
            .map(|(events, head)| (events.as_slice(), head)),
    );
    for (ids, sql) in [
        (
            opens,
            "INSERT OR IGNORE INTO open_jobs (job_id) SELECT value FROM json_each(?)",
        ),
        (
            closes,
            "DELETE FROM open_jobs WHERE job_id IN (SELECT value FROM json_each(?))",
        ),
    ] {
        if !ids.is_empty() {
            sqlx::query(sql)
                .bind(json_text(&ids)?)
                .execute(&mut *tx)
                .await
                .map_err(persistence_error)?;
        }
    }
    let heads: Vec<_> = commits
        .iter()
        .map(|(_, h)| {
            (
                h.job_id.as_str(),
                h.sequence,
                h.link.as_str(),
                h.key_id.as_str(),
                h.sig.as_str(),
            )
        })
        .collect();
    // `WHERE true`: SQLite reads an `ON CONFLICT` after a bare `FROM` as
    // the join's.
    sqlx::query(
        "INSERT INTO job_heads (job_id, sequence, link, key_id, sig)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4
           FROM json_each(?) WHERE true
         ON CONFLICT (job_id) DO UPDATE SET sequence = excluded.sequence, link = excluded.link,
            key_id = excluded.key_id, sig = excluded.sig",
    )
    .bind(json_text(&heads)?)
    .execute(&mut *tx)
    .await
    .map_err(persistence_error)?;
    Ok(positions)
}

/// `rows` as the JSON text a statement reads with `json_each`.
fn json_text(rows: &impl serde::Serialize) -> Result<String, PersistenceError> {
    serde_json::to_string(rows).map_err(|e| PersistenceError::UnknownError(e.into()))
}

/// The events at or before `upto` of the jobs in `open_jobs`, in feed
/// order: one primary-key range per open job (`CROSS JOIN` keeps
/// `open_jobs` the outer loop), however long the finished history.
pub(crate) async fn open_job_events(pool: &SqlitePool, upto: Position) -> Result<Vec<RawEvent>> {
    sqlx::query(
        "SELECT e.global_position, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
           FROM open_jobs o CROSS JOIN events e
          WHERE e.aggregate_type = ? AND e.aggregate_id = o.job_id AND e.global_position <= ?
          ORDER BY e.global_position",
    )
    .bind(AGGREGATE)
    .bind(upto as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(raw)
    .collect()
}

/// A job's events in sequence order and its head, read in one statement
/// (one snapshot: a writer that commits meanwhile is seen in both or neither).
pub(crate) async fn job_log(
    pool: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<JobLog> {
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT 0, sequence, global_position, event_type, event_version, payload, metadata
           FROM events WHERE aggregate_type = ? AND aggregate_id = ?
         UNION ALL
         SELECT 1, sequence, 0, link, key_id, sig, '' FROM job_heads WHERE job_id = ?
         ORDER BY 1, 2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await?;
    log_from_rows(aggregate_id, rows)
}

pub(crate) async fn heads(pool: &SqlitePool) -> Result<Vec<Head>> {
    let rows: Vec<(String, i64, String, String, String)> =
        sqlx::query_as("SELECT job_id, sequence, link, key_id, sig FROM job_heads ORDER BY job_id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(head_from_row).collect())
}

pub(crate) async fn checkpoints(pool: &SqlitePool) -> Result<Vec<Checkpoint>> {
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT position, root, key_id, sig, signed_at FROM audit_checkpoints ORDER BY position",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(checkpoint_from_row).collect())
}

pub(crate) async fn insert_checkpoint(pool: &SqlitePool, c: &Checkpoint) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (position, root, key_id, sig, signed_at) VALUES (?, ?, ?, ?, ?)
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

/// Whether the file at `path` holds an events table, asked on a read-only
/// connection of its own so that nothing is created (an audit never
/// creates a store).
pub(crate) async fn events_table_exists(path: &Path) -> Result<bool> {
    use sqlx::Connection;
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let found = sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'")
        .fetch_optional(&mut conn)
        .await?
        .is_some();
    conn.close().await?;
    Ok(found)
}

pub(crate) async fn checkpoint(pool: &SqlitePool, name: &str) -> Result<Position> {
    let p: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(p.unwrap_or(0) as Position)
}

pub(crate) async fn apply_views(
    pool: &SqlitePool,
    name: &str,
    from: Position,
    events: &[StoredEvent],
    written: &mut Written,
) -> Result<Position> {
    // The write lock first, so the checkpoint read below cannot go stale.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("INSERT OR IGNORE INTO projection_checkpoints (name, position) VALUES (?, 0)")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let cp: i64 = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    let cp = cp as Position;
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
    let mut current = HashMap::new();
    for e in &events {
        if current.contains_key(&e.job_id) {
            continue;
        }
        let status = match known.get(&e.job_id) {
            Some(s) => Some(s.clone()),
            None => {
                let row: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT payload, fixed FROM job_status WHERE job_id = ?")
                        .bind(e.job_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                row.map(|(p, f)| status_from_text(&p, f.as_deref()))
                    .transpose()?
            }
        };
        current.insert(e.job_id.clone(), status);
    }
    let stored = stored(&current);
    let (statuses, changes) = fold_batch(current, events.into_iter());
    for s in statuses.values() {
        let (payload, fixed) = status_row(s, !stored.contains(&s.job_id))?;
        sqlx::query(
            "INSERT INTO job_status
                (job_id, tenant, state, base_model, engine, created_us, updated_us, sequence, last_position, payload, fixed)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (job_id) DO UPDATE SET
                tenant = excluded.tenant, state = excluded.state, base_model = excluded.base_model,
                engine = excluded.engine, created_us = excluded.created_us, updated_us = excluded.updated_us,
                sequence = excluded.sequence, last_position = excluded.last_position, payload = excluded.payload",
        )
        .bind(s.job_id.as_str())
        .bind(s.tenant.as_str())
        .bind(s.state.as_str())
        .bind(s.base_model.as_str())
        .bind(s.engine.as_str())
        .bind(s.created_at.timestamp_micros())
        .bind(s.updated_at.timestamp_micros())
        .bind(s.sequence as i64)
        .bind(s.last_position as i64)
        .bind(payload)
        .bind(fixed)
        .execute(&mut *tx)
        .await?;
    }
    for c in changes {
        match c {
            QueueChange::Upsert(q) => {
                sqlx::query(
                    "INSERT INTO queue (job_id, step_id, tenant, priority, position, payload)
                     VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (job_id, step_id) DO UPDATE SET
                        tenant = excluded.tenant, priority = excluded.priority,
                        position = excluded.position, payload = excluded.payload",
                )
                .bind(q.job_id.as_str())
                .bind(q.step_id.as_str())
                .bind(q.tenant.as_str())
                .bind(q.priority)
                .bind(q.position as i64)
                .bind(serde_json::to_string(&q)?)
                .execute(&mut *tx)
                .await?;
            }
            QueueChange::Remove { job_id, step_id } => {
                sqlx::query("DELETE FROM queue WHERE job_id = ? AND step_id = ?")
                    .bind(job_id.as_str())
                    .bind(step_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            QueueChange::RemoveJob { job_id } => {
                sqlx::query("DELETE FROM queue WHERE job_id = ?")
                    .bind(job_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    sqlx::query("UPDATE projection_checkpoints SET position = ? WHERE name = ?")
        .bind(last as i64)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    written.wrote(last, statuses.into_values());
    Ok(last)
}

pub(crate) async fn reset_views(pool: &SqlitePool, name: &str) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for sql in [
        "DELETE FROM job_status",
        "DELETE FROM queue",
        "INSERT OR REPLACE INTO projection_checkpoints (name, position) VALUES (?, 0)",
    ] {
        let q = sqlx::query(sql);
        let q = if sql.contains('?') { q.bind(name) } else { q };
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn job_status(pool: &SqlitePool, job: &JobId) -> Result<Option<JobStatus>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT payload, fixed FROM job_status WHERE job_id = ?")
            .bind(job.as_str())
            .fetch_optional(pool)
            .await?;
    row.map(|(p, f)| status_from_text(&p, f.as_deref()))
        .transpose()
}

pub(crate) async fn list_jobs(
    pool: &SqlitePool,
    filter: &JobListFilter,
    after: Option<&ListCursor>,
    limit: usize,
) -> Result<Vec<JobStatus>> {
    if !filter.labels.keys().all(|k| plain_label_key(k)) {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<Sqlite>::new("SELECT payload, fixed FROM job_status WHERE 1 = 1");
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
        q.push(" AND json_extract(payload, ")
            .push_bind(format!("$.labels.\"{k}\""))
            .push(") = ")
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
    let rows: Vec<(String, Option<String>)> = q.build_query_as().fetch_all(pool).await?;
    rows.iter()
        .map(|(p, f)| status_from_text(p, f.as_deref()))
        .collect()
}

/// A status from its row's two texts (see `projection::status_row`).
fn status_from_text(payload: &str, fixed: Option<&str>) -> Result<JobStatus> {
    let fixed = fixed.map(serde_json::from_str).transpose()?;
    status_from_row(serde_json::from_str(payload)?, fixed)
}

pub(crate) async fn queue(pool: &SqlitePool) -> Result<Vec<QueuedStep>> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM queue ORDER BY priority DESC, position")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .iter()
        .map(|p| serde_json::from_str(p))
        .collect::<Result<_, _>>()?)
}

/// Write one event row as it is given, without the store's metadata or
/// checks (tests plant old or tampered events this way).
#[cfg(test)]
pub(crate) async fn insert_raw(pool: &SqlitePool, e: &RawEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(AGGREGATE)
    .bind(e.job_id.as_str())
    .bind(e.sequence as i64)
    .bind(&e.event_type)
    .bind(&e.event_version)
    .bind(e.payload.to_string())
    .bind(e.metadata.to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// How often the store copies SQLite's write-ahead log into the database
/// file: often enough that each copy is small (a burst writes about 10 MB
/// of log a second here), since a large one holds up the commits after it.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Copy the write-ahead log into the database file every 200 ms (a passive
/// checkpoint, which waits for no reader and no writer), until the store
/// stops or is dropped. SQLite's default has the commit that grows the log
/// past 1,000 pages do it, syncing the file while its caller waits: in the
/// bench that commit was the slowest job's (the three steps' p99 at 90
/// steps/s 12–14 ms with it, 8–10 ms without).
pub(crate) fn checkpoint_wal(shared: std::sync::Weak<crate::store::Shared>) {
    let Some(stop) = shared.upgrade().map(|s| s.stop.clone()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WAL_CHECKPOINT_EVERY) => {}
            }
            // The pool is taken for each checkpoint only: a store dropped
            // without `close` still closes its files.
            let pool = match shared.upgrade().as_deref().map(|s| &s.backend) {
                Some(super::Backend::Sqlite(pool)) => pool.clone(),
                _ => return,
            };
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!("SQLite checkpoint of the write-ahead log failed: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::ids::TenantId;

    /// `EXPLAIN QUERY PLAN` of the feed read, as SQLite words it.
    async fn plan(pool: &SqlitePool, filter: &FeedFilter) -> String {
        let mut q = QueryBuilder::<Sqlite>::new("EXPLAIN QUERY PLAN ");
        q.push(feed_query(0, 500, filter).into_sql());
        let sql = q.into_sql();
        let mut query = sqlx::query(&sql).bind(AGGREGATE).bind(0i64);
        if let Some(t) = &filter.tenant {
            query = query.bind(t.as_str().to_owned());
        }
        if let Some(j) = &filter.job {
            query = query.bind(j.as_str().to_owned());
        }
        let rows = query.bind(500i64).fetch_all(pool).await.unwrap();
        rows.iter()
            .map(|r| r.get::<String, _>(3))
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn feed_reads_seek_by_position_instead_of_sorting_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let pool = connect(Some(&dir.path().join("plan.db")), &StoreOptions::default())
            .await
            .unwrap();
        crate::migrate::sqlite(&pool, MIGRATIONS).await.unwrap();

        let all = plan(&pool, &FeedFilter::all()).await;
        assert!(all.contains("USING INDEX events_global_position"), "{all}");
        let tenant = FeedFilter {
            tenant: Some(TenantId::new("acme")),
            job: None,
        };
        let tenant = plan(&pool, &tenant).await;
        assert!(tenant.contains("USING INDEX events_tenant"), "{tenant}");
        for p in [&all, &tenant] {
            assert!(!p.contains("TEMP B-TREE"), "a feed read sorts: {p}");
        }
        let job = FeedFilter {
            tenant: None,
            job: Some(JobId::new("j1")),
        };
        let job = plan(&pool, &job).await;
        assert!(job.contains("aggregate_type=? AND aggregate_id=?"), "{job}");
    }
}
