//! Versioned, idempotent schema migrations. Each backend lists its
//! [`Migration`]s; a `schema_migrations` table records the versions applied.
//! All pending migrations run in one transaction, under a lock, so two
//! processes starting at once apply each exactly once: PostgreSQL takes a
//! transaction-scoped advisory lock (keyed by schema), SQLite a
//! `BEGIN IMMEDIATE` write lock. The statements are idempotent themselves
//! (`IF NOT EXISTS`, column checks), so a database whose tables were created
//! by sqlite-es or postgres-es' own scripts is adopted as it is.

use sqlx::{PgPool, SqlitePool};

use crate::error::{Error, Result};

/// One statement of a migration.
pub(crate) enum Step {
    Sql(&'static str),
    /// SQLite has no `ADD COLUMN IF NOT EXISTS`: run `sql` unless `table`
    /// already has `column`.
    AddColumn {
        table: &'static str,
        column: &'static str,
        sql: &'static str,
    },
}

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub steps: &'static [Step],
}

fn failed(m: &Migration, e: sqlx::Error) -> Error {
    Error::Migration {
        version: m.version,
        name: m.name,
        source: Box::new(e),
    }
}

pub(crate) async fn postgres(pool: &PgPool, migrations: &[Migration]) -> Result<()> {
    let mut tx = crate::backend::postgres::begin(pool).await?;
    // Keyed by schema so that databases holding several stores (tests) do
    // not wait on each other.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('loraflow.migrate.' || current_schema()))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version bigint PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        for step in m.steps {
            let Step::Sql(sql) = step else {
                unreachable!("PostgreSQL migrations use ADD COLUMN IF NOT EXISTS")
            };
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(m, e))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn sqlite(pool: &SqlitePool, migrations: &[Migration]) -> Result<()> {
    // The write lock from the start: a second process waits (busy timeout)
    // instead of reading the versions before the first has written them.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) STRICT",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        for step in m.steps {
            let sql = match step {
                Step::Sql(sql) => sql,
                Step::AddColumn { table, column, sql } => {
                    // table_xinfo also lists generated columns.
                    let has = sqlx::query("SELECT 1 FROM pragma_table_xinfo(?) WHERE name = ?")
                        .bind(table)
                        .bind(column)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    if has {
                        continue;
                    }
                    sql
                }
            };
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(m, e))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The versions applied, oldest first (for tests and diagnostics).
#[cfg(test)]
pub(crate) async fn applied_sqlite(pool: &SqlitePool) -> Result<Vec<i64>> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The versions applied, oldest first (for tests and diagnostics).
#[cfg(test)]
pub(crate) async fn applied_postgres(pool: &PgPool) -> Result<Vec<i64>> {
    Ok(
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(pool)
            .await?,
    )
}
