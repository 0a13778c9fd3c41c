//! The relay's SQL: claim a batch of outbox rows, move the published ones to
//! `outbox_published`, record the failed ones. All three run in the same transaction, so a row
//! is either published and moved, or left as it was (and published again later: at least once,
//! never lost). Every row in `outbox` is unpublished (see migration 3 for why publishing moves
//! rows rather than updating them).
//!
//! Ordering across relays: a row is claimable only when no earlier (`seq`) row of the same
//! aggregate is still in the outbox, whether that row is free, locked by another relay, or
//! waiting out a retry. So at most one row per bill is in flight anywhere, a batch holds at most one row per
//! bill, and a bill's next event is claimed only after the previous one was acknowledged by the
//! broker and committed as published.
//!
//! Within one relay, claims also leave out the `seq` range of the other workers' batches in
//! flight ([`InFlightRanges`]). `SKIP LOCKED` would skip those rows anyway, but only after
//! trying each row's lock: measured on a 200,000-row backlog, a claim behind another worker's
//! 1,000 locked rows took 6 ms instead of 2.4-3.5 ms. The filter is a plain comparison on the
//! row. It is only an optimisation: a row inside the range but not in those batches (one
//! another relay holds, or one whose bill had an earlier row in flight) is claimed by a later
//! claim once the range is released, and `SKIP LOCKED` still keeps workers apart.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
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
 WHERE o.seq >= $2
   AND NOT (o.seq BETWEEN $3 AND $4)
   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
   AND NOT EXISTS (SELECT 1 FROM outbox e
                    WHERE e.aggregateid = o.aggregateid
                      AND e.seq < o.seq)
 ORDER BY o.seq
 LIMIT $1
   FOR UPDATE OF o SKIP LOCKED";

/// Locks up to `limit` publishable rows from `seq` `low_water` on, oldest first, outside the
/// `skip` range (inclusive; `None` skips nothing), skipping rows other relays hold. See
/// [`crate::low_water`] for the bound.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    low_water: i64,
    skip: Option<(i64, i64)>,
) -> sqlx::Result<Vec<OutboxRow>> {
    let (skip_from, skip_to) = skip.unwrap_or((1, 0));
    sqlx::query_as::<_, OutboxRow>(CLAIM)
        .bind(limit)
        .bind(low_water)
        .bind(skip_from)
        .bind(skip_to)
        .fetch_all(conn)
        .await
}

/// The `seq` ranges (smallest, largest) of the batches this relay has in flight.
#[derive(Debug, Default)]
pub struct InFlightRanges {
    ranges: Mutex<Vec<(u64, i64, i64)>>,
    next: AtomicU64,
}

impl InFlightRanges {
    /// The smallest range covering every batch in flight, if any.
    pub fn hull(&self) -> Option<(i64, i64)> {
        let ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        ranges.iter().fold(None, |hull, &(_, lo, hi)| match hull {
            None => Some((lo, hi)),
            Some((a, b)) => Some((a.min(lo), b.max(hi))),
        })
    }

    /// Records `rows` as in flight, and counts the batch in `batches`, until the guard is
    /// dropped, however the batch ends.
    pub fn hold<'a>(&'a self, rows: &[OutboxRow], batches: &'a AtomicUsize) -> InFlightGuard<'a> {
        let lo = rows.iter().map(|r| r.seq).min().unwrap_or(0);
        let hi = rows.iter().map(|r| r.seq).max().unwrap_or(-1);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        batches.fetch_add(1, Ordering::SeqCst);
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, lo, hi));
        InFlightGuard {
            ranges: self,
            batches,
            id,
        }
    }
}

/// Releases its batch's range and count when dropped.
pub struct InFlightGuard<'a> {
    ranges: &'a InFlightRanges,
    batches: &'a AtomicUsize,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.batches.fetch_sub(1, Ordering::SeqCst);
        self.ranges
            .ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&(id, _, _)| id != self.id);
    }
}

/// Moves published rows from `outbox` to `outbox_published`, with one statement.
/// `clock_timestamp()` rather than `now()`: the transaction started before the records were
/// sent, and `published_at` says when the broker had acknowledged them.
pub async fn mark_published(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "WITH moved AS (
             DELETE FROM outbox WHERE id = ANY($1)
             RETURNING id, seq, aggregatetype, aggregateid, type, payload, topic, headers,
                       created_at, publish_attempts, last_error)
         INSERT INTO outbox_published (id, seq, aggregatetype, aggregateid, type, payload, topic,
                                       headers, created_at, published_at, publish_attempts,
                                       last_error)
         SELECT id, seq, aggregatetype, aggregateid, type, payload, topic, headers, created_at,
                clock_timestamp(), publish_attempts, last_error
           FROM moved",
    )
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
