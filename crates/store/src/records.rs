//! Small named records kept in the store beside the events, one JSON value
//! per `(kind, tenant, name)`: what the engine must remember across restarts
//! that is not a job's history (a tenant's registered base models, upload
//! sessions in progress). A record is written whole and read whole; the
//! three backends differ in SQL text only.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::backend::Backend;
use crate::error::Result;
use crate::migrate::Step;

/// The SQLite table (migration 6).
pub(crate) const SQLITE_SCHEMA: &[Step] = &[Step::Sql(
    "CREATE TABLE IF NOT EXISTS records (
        kind    TEXT NOT NULL,
        tenant  TEXT NOT NULL,
        name    TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (kind, tenant, name)
    ) STRICT",
)];

/// The PostgreSQL table (migration 6).
pub(crate) const POSTGRES_SCHEMA: &[Step] = &[Step::Sql(
    "CREATE TABLE IF NOT EXISTS records (
        kind    text NOT NULL,
        tenant  text NOT NULL,
        name    text NOT NULL,
        payload text NOT NULL,
        PRIMARY KEY (kind, tenant, name)
    )",
)];

/// The statements of one dialect.
struct Sql {
    insert: &'static str,
    upsert: &'static str,
    get: &'static str,
    list: &'static str,
    list_of: &'static str,
    delete: &'static str,
}

const SQLITE: Sql = Sql {
    insert: "INSERT INTO records (kind, tenant, name, payload) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
    upsert: "INSERT INTO records (kind, tenant, name, payload) VALUES (?, ?, ?, ?)
             ON CONFLICT (kind, tenant, name) DO UPDATE SET payload = excluded.payload",
    get: "SELECT payload FROM records WHERE kind = ? AND tenant = ? AND name = ?",
    list: "SELECT tenant, name, payload FROM records WHERE kind = ? ORDER BY tenant, name",
    list_of: "SELECT tenant, name, payload FROM records WHERE kind = ? AND tenant = ? ORDER BY name",
    delete: "DELETE FROM records WHERE kind = ? AND tenant = ? AND name = ?",
};

const POSTGRES: Sql = Sql {
    insert: "INSERT INTO records (kind, tenant, name, payload) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    upsert: "INSERT INTO records (kind, tenant, name, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, tenant, name) DO UPDATE SET payload = excluded.payload",
    get: "SELECT payload FROM records WHERE kind = $1 AND tenant = $2 AND name = $3",
    list: "SELECT tenant, name, payload FROM records WHERE kind = $1 ORDER BY tenant, name",
    list_of: "SELECT tenant, name, payload FROM records WHERE kind = $1 AND tenant = $2 ORDER BY name",
    delete: "DELETE FROM records WHERE kind = $1 AND tenant = $2 AND name = $3",
};

/// The memory backend's records.
#[derive(Default)]
pub(crate) struct MemoryRecords {
    rows: Mutex<BTreeMap<(String, String, String), Value>>,
}

impl MemoryRecords {
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String, String), Value>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub tenant: String,
    pub name: String,
    pub value: Value,
}

/// The records of a store ([`Store::records`](crate::Store::records)):
/// cheap to clone.
#[derive(Clone)]
pub struct Records {
    pub(crate) backend: Backend,
    pub(crate) memory: std::sync::Arc<MemoryRecords>,
}

fn key(kind: &str, tenant: &str, name: &str) -> (String, String, String) {
    (kind.to_owned(), tenant.to_owned(), name.to_owned())
}

impl Records {
    /// Store `value` under `(kind, tenant, name)` unless a record is there
    /// already; `false` (and nothing written) when one is.
    pub async fn insert(
        &self,
        kind: &str,
        tenant: &str,
        name: &str,
        value: &Value,
    ) -> Result<bool> {
        if let Backend::Memory(..) = self.backend {
            let mut rows = self.memory.rows();
            let k = key(kind, tenant, name);
            if rows.contains_key(&k) {
                return Ok(false);
            }
            rows.insert(k, value.clone());
            return Ok(true);
        }
        let payload = serde_json::to_string(value)?;
        let affected = match &self.backend {
            Backend::Sqlite(p) => sqlx::query(SQLITE.insert)
                .bind(kind)
                .bind(tenant)
                .bind(name)
                .bind(&payload)
                .execute(p)
                .await?
                .rows_affected(),
            Backend::Postgres(p) => sqlx::query(POSTGRES.insert)
                .bind(kind)
                .bind(tenant)
                .bind(name)
                .bind(&payload)
                .execute(p)
                .await?
                .rows_affected(),
            Backend::Memory(..) => unreachable!(),
        };
        Ok(affected == 1)
    }

    /// Store `value` under `(kind, tenant, name)`, replacing what was there.
    pub async fn put(&self, kind: &str, tenant: &str, name: &str, value: &Value) -> Result<()> {
        if let Backend::Memory(..) = self.backend {
            self.memory
                .rows()
                .insert(key(kind, tenant, name), value.clone());
            return Ok(());
        }
        let payload = serde_json::to_string(value)?;
        match &self.backend {
            Backend::Sqlite(p) => {
                sqlx::query(SQLITE.upsert)
                    .bind(kind)
                    .bind(tenant)
                    .bind(name)
                    .bind(&payload)
                    .execute(p)
                    .await?;
            }
            Backend::Postgres(p) => {
                sqlx::query(POSTGRES.upsert)
                    .bind(kind)
                    .bind(tenant)
                    .bind(name)
                    .bind(&payload)
                    .execute(p)
                    .await?;
            }
            Backend::Memory(..) => unreachable!(),
        }
        Ok(())
    }

    /// The record under `(kind, tenant, name)`, if there is one.
    pub async fn get(&self, kind: &str, tenant: &str, name: &str) -> Result<Option<Value>> {
        if let Backend::Memory(..) = self.backend {
            return Ok(self.memory.rows().get(&key(kind, tenant, name)).cloned());
        }
        let payload: Option<String> = match &self.backend {
            Backend::Sqlite(p) => {
                sqlx::query_scalar(SQLITE.get)
                    .bind(kind)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(p)
                    .await?
            }
            Backend::Postgres(p) => {
                sqlx::query_scalar(POSTGRES.get)
                    .bind(kind)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(p)
                    .await?
            }
            Backend::Memory(..) => unreachable!(),
        };
        Ok(payload.map(|p| serde_json::from_str(&p)).transpose()?)
    }

    /// Every record of `kind`, by tenant and name.
    pub async fn list(&self, kind: &str) -> Result<Vec<Record>> {
        self.list_where(kind, None).await
    }

    /// `tenant`'s records of `kind`, by name: a range of the table's key,
    /// read without touching other tenants' records.
    pub async fn list_of(&self, kind: &str, tenant: &str) -> Result<Vec<Record>> {
        self.list_where(kind, Some(tenant)).await
    }

    /// The records of `kind` (of `tenant` alone, if given), in key order.
    async fn list_where(&self, kind: &str, tenant: Option<&str>) -> Result<Vec<Record>> {
        if let Backend::Memory(..) = self.backend {
            return Ok(self
                .memory
                .rows()
                .iter()
                .filter(|((k, t, _), _)| k == kind && tenant.is_none_or(|tenant| t == tenant))
                .map(|((_, tenant, name), value)| Record {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect());
        }
        let sql = match self.backend {
            Backend::Sqlite(_) => &SQLITE,
            _ => &POSTGRES,
        };
        let statement = if tenant.is_some() {
            sql.list_of
        } else {
            sql.list
        };
        let rows: Vec<(String, String, String)> = match &self.backend {
            Backend::Sqlite(p) => {
                let q = sqlx::query_as(statement).bind(kind);
                let q = match tenant {
                    Some(t) => q.bind(t),
                    None => q,
                };
                q.fetch_all(p).await?
            }
            Backend::Postgres(p) => {
                let q = sqlx::query_as(statement).bind(kind);
                let q = match tenant {
                    Some(t) => q.bind(t),
                    None => q,
                };
                q.fetch_all(p).await?
            }
            Backend::Memory(..) => unreachable!(),
        };
        rows.into_iter()
            .map(|(tenant, name, payload)| -> Result<Record> {
                Ok(Record {
                    tenant,
                    name,
                    value: serde_json::from_str(&payload)?,
                })
            })
            .collect()
    }

    /// Remove the record under `(kind, tenant, name)`; `false` when there
    /// was none.
    pub async fn delete(&self, kind: &str, tenant: &str, name: &str) -> Result<bool> {
        if let Backend::Memory(..) = self.backend {
            return Ok(self
                .memory
                .rows()
                .remove(&key(kind, tenant, name))
                .is_some());
        }
        let affected = match &self.backend {
            Backend::Sqlite(p) => sqlx::query(SQLITE.delete)
                .bind(kind)
                .bind(tenant)
                .bind(name)
                .execute(p)
                .await?
                .rows_affected(),
            Backend::Postgres(p) => sqlx::query(POSTGRES.delete)
                .bind(kind)
                .bind(tenant)
                .bind(name)
                .execute(p)
                .await?
                .rows_affected(),
            Backend::Memory(..) => unreachable!(),
        };
        Ok(affected == 1)
    }
}
