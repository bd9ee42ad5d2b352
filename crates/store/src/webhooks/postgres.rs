//! The outbox on PostgreSQL: tables, filling, claiming and recording.
//! Bodies are `text`, not `jsonb`: the bytes signed must be the bytes stored.
//!
//! Filling and recording both lock the subscription's row first (`FOR
//! UPDATE`): under READ COMMITTED, a fill that checked "is an earlier event
//! pending?" while a record was marking that event delivered could otherwise
//! queue its delivery unarmed after the record had armed nothing, and the
//! URL would stall. With the lock, whichever comes second sees the other's
//! rows. The checkpoint row lock serialises fills; the delivery row lock
//! keeps two processes from recording one attempt twice.

use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};
use loraflow_core::ids::{JobId, TenantId};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::fold::{self, Subscription};
use super::{AfterAttempt, AttemptRecord, Delivery, DeliveryAttempt, DeliveryCursor, WEBHOOKS};
use super::{from_micros, micros};
use crate::error::{Error, Result};
use crate::event::{Position, StoredEvent};
use crate::migrate::Step;

pub(crate) const SCHEMA: &[Step] = &[
    Step::Sql(
        "CREATE TABLE IF NOT EXISTS webhook_subscriptions (
            job_id   text NOT NULL,
            url      text NOT NULL,
            tenant   text NOT NULL,
            events   text NOT NULL,
            position bigint NOT NULL,
            PRIMARY KEY (job_id, url)
        )",
    ),
    Step::Sql(
        "CREATE TABLE IF NOT EXISTS webhook_deliveries (
            job_id          text NOT NULL,
            url             text NOT NULL,
            sequence        bigint NOT NULL,
            position        bigint NOT NULL,
            tenant          text NOT NULL,
            event_type      text NOT NULL,
            body            text NOT NULL,
            state           text NOT NULL,
            attempts        integer NOT NULL,
            enqueued_us     bigint NOT NULL,
            next_attempt_us bigint,
            delivered_us    bigint,
            last_status     integer,
            last_error      text,
            PRIMARY KEY (job_id, url, sequence)
        )",
    ),
    Step::Sql(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_due
         ON webhook_deliveries (next_attempt_us) WHERE state = 'pending'",
    ),
    Step::Sql(
        "CREATE TABLE IF NOT EXISTS webhook_attempts (
            job_id      text NOT NULL,
            url         text NOT NULL,
            sequence    bigint NOT NULL,
            attempt     integer NOT NULL,
            at_us       bigint NOT NULL,
            status      integer,
            error       text,
            duration_ms bigint NOT NULL,
            delivered   boolean NOT NULL,
            PRIMARY KEY (job_id, url, sequence, attempt)
        )",
    ),
];

const DELIVERY_COLUMNS: &str = "job_id, url, sequence, position, tenant, event_type, body, state, \
     attempts, enqueued_us, next_attempt_us, delivered_us, last_status, last_error";

fn delivery(row: &PgRow) -> Result<Delivery> {
    let job_id = JobId::new(row.try_get::<String, _>(0)?);
    let sequence = row.try_get::<i64, _>(2)? as u64;
    let state: String = row.try_get(7)?;
    Ok(Delivery {
        event_id: loraflow_core::webhook::event_id(&job_id, sequence),
        job_id,
        url: row.try_get(1)?,
        sequence,
        position: row.try_get::<i64, _>(3)? as Position,
        tenant: TenantId::new(row.try_get::<String, _>(4)?),
        event_type: row.try_get(5)?,
        body: row.try_get(6)?,
        state: state.parse().map_err(Error::serialization)?,
        attempts: row.try_get::<i32, _>(8)? as u32,
        enqueued_at: from_micros(row.try_get(9)?),
        next_attempt_at: row.try_get::<Option<i64>, _>(10)?.map(from_micros),
        delivered_at: row.try_get::<Option<i64>, _>(11)?.map(from_micros),
        last_status: row.try_get::<Option<i32>, _>(12)?.map(|s| s as u16),
        last_error: row.try_get(13)?,
    })
}

pub(crate) async fn apply(
    pool: &PgPool,
    from: Position,
    events: &[StoredEvent],
    now: DateTime<Utc>,
) -> Result<(Position, usize)> {
    let mut tx = crate::backend::postgres::begin(pool).await?;
    let cp = crate::backend::postgres::lock_checkpoint(&mut tx, WEBHOOKS).await?;
    if cp < from {
        tx.commit().await?;
        return Ok((cp, 0));
    }
    let events: Vec<&StoredEvent> = events.iter().filter(|e| e.position > cp).collect();
    let Some(last) = events.last().map(|e| e.position) else {
        tx.commit().await?;
        return Ok((cp, 0));
    };
    for s in fold::created(&events) {
        sqlx::query(
            "INSERT INTO webhook_subscriptions (job_id, url, tenant, events, position)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(s.job_id.as_str())
        .bind(&s.url)
        .bind(s.tenant.as_str())
        .bind(serde_json::to_string(&s.events)?)
        .bind(s.position as i64)
        .execute(&mut *tx)
        .await?;
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e.job_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT job_id, url, tenant, events, position FROM webhook_subscriptions
         WHERE job_id = ANY($1) ORDER BY job_id, url FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut subs = Vec::with_capacity(rows.len());
    for r in &rows {
        subs.push(Subscription {
            job_id: JobId::new(r.try_get::<String, _>(0)?),
            url: r.try_get(1)?,
            tenant: TenantId::new(r.try_get::<String, _>(2)?),
            events: serde_json::from_str(&r.try_get::<String, _>(3)?)?,
            position: r.try_get::<i64, _>(4)? as Position,
        });
    }
    let deliveries = fold::deliveries(&events, &subs)?;
    for d in &deliveries {
        // Armed only when no earlier event of the URL is still pending;
        // inserted in feed order, so each insert sees the ones before it.
        sqlx::query(
            "INSERT INTO webhook_deliveries
                (job_id, url, sequence, position, tenant, event_type, body, state, attempts,
                 enqueued_us, next_attempt_us)
             SELECT $1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8,
                    CASE WHEN EXISTS (SELECT 1 FROM webhook_deliveries
                                      WHERE job_id = $1 AND url = $2 AND state = 'pending')
                         THEN NULL ELSE $8 END
             ON CONFLICT DO NOTHING",
        )
        .bind(d.job_id.as_str())
        .bind(&d.url)
        .bind(d.sequence as i64)
        .bind(d.position as i64)
        .bind(d.tenant.as_str())
        .bind(d.event_type)
        .bind(&d.body)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE projection_checkpoints SET position = $1 WHERE name = $2")
        .bind(last as i64)
        .bind(WEBHOOKS)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((last, deliveries.len()))
}

pub(crate) async fn due(pool: &PgPool, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
    sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE state = 'pending' AND next_attempt_us <= $1
         ORDER BY next_attempt_us, position LIMIT $2"
    ))
    .bind(micros(now))
    .bind(limit as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(delivery)
    .collect()
}

pub(crate) async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>> {
    let us: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(next_attempt_us) FROM webhook_deliveries WHERE state = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    Ok(us.map(from_micros))
}

pub(crate) async fn claim(pool: &PgPool, d: &Delivery, until: DateTime<Utc>) -> Result<bool> {
    let Some(seen) = d.next_attempt_at else {
        return Ok(false);
    };
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_us = $1
         WHERE job_id = $2 AND url = $3 AND sequence = $4 AND state = 'pending'
           AND next_attempt_us = $5",
    )
    .bind(micros(until))
    .bind(d.job_id.as_str())
    .bind(&d.url)
    .bind(d.sequence as i64)
    .bind(micros(seen))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn record(pool: &PgPool, d: &Delivery, r: &AttemptRecord) -> Result<bool> {
    let mut tx = crate::backend::postgres::begin(pool).await?;
    sqlx::query("SELECT 1 FROM webhook_subscriptions WHERE job_id = $1 AND url = $2 FOR UPDATE")
        .bind(d.job_id.as_str())
        .bind(&d.url)
        .execute(&mut *tx)
        .await?;
    let attempts: Option<i32> = sqlx::query_scalar(
        "SELECT attempts FROM webhook_deliveries
         WHERE job_id = $1 AND url = $2 AND sequence = $3 AND state = 'pending'
         FOR UPDATE",
    )
    .bind(d.job_id.as_str())
    .bind(&d.url)
    .bind(d.sequence as i64)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(attempts) = attempts else {
        tx.commit().await?;
        return Ok(false);
    };
    let attempt = attempts + 1;
    let delivered = r.after == AfterAttempt::Delivered;
    sqlx::query(
        "INSERT INTO webhook_attempts
            (job_id, url, sequence, attempt, at_us, status, error, duration_ms, delivered)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(d.job_id.as_str())
    .bind(&d.url)
    .bind(d.sequence as i64)
    .bind(attempt)
    .bind(micros(r.at))
    .bind(r.status.map(i32::from))
    .bind(&r.error)
    .bind(r.duration.as_millis() as i64)
    .bind(delivered)
    .execute(&mut *tx)
    .await?;
    let (state, next, delivered_at) = match r.after {
        AfterAttempt::Delivered => ("delivered", None, Some(micros(r.at))),
        AfterAttempt::RetryAt(t) => ("pending", Some(micros(t)), None),
        AfterAttempt::Abandon => ("abandoned", None, None),
    };
    sqlx::query(
        "UPDATE webhook_deliveries
            SET state = $1, attempts = $2, next_attempt_us = $3, delivered_us = $4,
                last_status = $5, last_error = $6
          WHERE job_id = $7 AND url = $8 AND sequence = $9",
    )
    .bind(state)
    .bind(attempt)
    .bind(next)
    .bind(delivered_at)
    .bind(r.status.map(i32::from))
    .bind(&r.error)
    .bind(d.job_id.as_str())
    .bind(&d.url)
    .bind(d.sequence as i64)
    .execute(&mut *tx)
    .await?;
    if state != "pending" {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_us = $1
              WHERE job_id = $2 AND url = $3 AND state = 'pending'
                AND sequence = (SELECT MIN(sequence) FROM webhook_deliveries
                                 WHERE job_id = $2 AND url = $3 AND state = 'pending')",
        )
        .bind(micros(r.at))
        .bind(d.job_id.as_str())
        .bind(&d.url)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn deliveries(
    pool: &PgPool,
    job: &JobId,
    after: Option<&DeliveryCursor>,
    limit: usize,
) -> Result<Vec<Delivery>> {
    let (seq, url) = after.map_or((-1, String::new()), |c| (c.sequence as i64, c.url.clone()));
    sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE job_id = $1 AND (sequence, url) > ($2, $3)
         ORDER BY sequence, url LIMIT $4"
    ))
    .bind(job.as_str())
    .bind(seq)
    .bind(url)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(delivery)
    .collect()
}

pub(crate) async fn attempts(
    pool: &PgPool,
    job: &JobId,
    sequences: RangeInclusive<u64>,
) -> Result<Vec<DeliveryAttempt>> {
    let rows = sqlx::query(
        "SELECT url, sequence, attempt, at_us, status, error, duration_ms, delivered
           FROM webhook_attempts
          WHERE job_id = $1 AND sequence BETWEEN $2 AND $3
          ORDER BY sequence, url, attempt",
    )
    .bind(job.as_str())
    .bind(*sequences.start() as i64)
    .bind((*sequences.end()).min(i64::MAX as u64) as i64)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryAttempt {
                job_id: job.clone(),
                url: r.try_get(0)?,
                sequence: r.try_get::<i64, _>(1)? as u64,
                attempt: r.try_get::<i32, _>(2)? as u32,
                at: from_micros(r.try_get(3)?),
                status: r.try_get::<Option<i32>, _>(4)?.map(|s| s as u16),
                error: r.try_get(5)?,
                duration_ms: r.try_get::<i64, _>(6)? as u64,
                delivered: r.try_get(7)?,
            })
        })
        .collect()
}
