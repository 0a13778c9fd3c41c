//! The relay's SQL: claim a batch of unpublished rows, mark the published ones, record the
//! failed ones. All three run in the same transaction, so a row is either published and marked,
//! or left as it was (and published again later: at least once, never lost).
//!
//! Ordering across relays: a row is claimable only when no earlier (`seq`) row of the same
//! aggregate is unpublished, whether that row is free, locked by another relay, or waiting out
//! a retry. So at most one row per bill is in flight anywhere, a batch holds at most one row per
//! bill, and a bill's next event is claimed only after the previous one was acknowledged by the
//! broker and committed as published.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// One claimed outbox row, as it goes to Kafka.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub seq: i64,
    /// The record key (the bill id).
    pub aggregateid: String,
    pub topic: String,
    /// The record value: the payload's JSON text as Postgres renders `jsonb`.
    pub payload: String,
    /// Become the record headers; string values as they are, others as JSON text.
    pub headers: Json<BTreeMap<String, Value>>,
    pub created_at: DateTime<Utc>,
    pub publish_attempts: i32,
}

const CLAIM: &str = "
SELECT o.id, o.seq, o.aggregateid, o.topic, o.payload::text AS payload, o.headers,
       o.created_at, o.publish_attempts
  FROM outbox o
 WHERE o.published_at IS NULL
   AND o.seq >= $2
   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
   AND NOT EXISTS (SELECT 1 FROM outbox e
                    WHERE e.aggregateid = o.aggregateid
                      AND e.published_at IS NULL
                      AND e.seq < o.seq)
 ORDER BY o.seq
 LIMIT $1
   FOR UPDATE OF o SKIP LOCKED";

/// Locks up to `limit` publishable rows from `seq` `low_water` on, oldest first, skipping rows
/// other relays hold. See [`crate::low_water`] for the bound.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    low_water: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as::<_, OutboxRow>(CLAIM)
        .bind(limit)
        .bind(low_water)
        .fetch_all(conn)
        .await
}

/// Marks rows published, with one statement. `clock_timestamp()` rather than `now()`: the
/// transaction started before the records were sent, and `published_at` says when the broker
/// had acknowledged them.
pub async fn mark_published(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// A row that could not be published in this batch.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: Uuid,
    pub error: String,
    /// A per-row error (unknown topic, record too large): the row waits out a capped
    /// exponential back-off of its own, so it does not hold up the others. A broker-wide error
    /// leaves the row claimable at once; the worker backs off instead.
    pub permanent: bool,
}

/// Records failed attempts (attempt count, error, next attempt) with one statement and returns
/// each row's attempt count afterwards.
pub async fn record_failures(
    conn: &mut PgConnection,
    failures: &[Failure],
    retry_cap: Duration,
) -> sqlx::Result<Vec<(Uuid, i32)>> {
    if failures.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let permanent: Vec<bool> = failures.iter().map(|f| f.permanent).collect();
    sqlx::query_as::<_, (Uuid, i32)>(
        "UPDATE outbox o
            SET publish_attempts = o.publish_attempts + 1,
                last_error = f.error,
                next_attempt_at = CASE WHEN f.permanent THEN clock_timestamp() + LEAST(
                    make_interval(secs => power(2, LEAST(o.publish_attempts, 20))),
                    make_interval(secs => $4)) END
           FROM UNNEST($1::uuid[], $2::text[], $3::bool[]) AS f(id, error, permanent)
          WHERE o.id = f.id
      RETURNING o.id, o.publish_attempts",
    )
    .bind(&ids)
    .bind(&errors)
    .bind(&permanent)
    .bind(retry_cap.as_secs_f64())
    .fetch_all(conn)
    .await
}
