//! Rows that could not go out with their chunk wait in `outbox_parked`: with their error and
//! a back-off of their own when the broker refused them (unknown topic, too large, a partial
//! broker failure), or with no error when an earlier event of their bill is parked (a bill's
//! events never overtake each other). The chunk's position moves on either way, so a bad row
//! holds up nothing but its own bill.
//!
//! The relay holding the lane retries the due ones, oldest first and only the first waiting
//! row of each bill, in the same kind of transaction as a chunk.

use crate::position::OutboxRow;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// Why a row is parked.
#[derive(Debug, Clone)]
pub struct Parking {
    pub seq: i64,
    pub id: Uuid,
    pub aggregateid: String,
    /// `None`: held behind an earlier event of its bill (not an attempt).
    pub error: Option<String>,
    /// A per-row error (retried on the row's capped exponential back-off) rather than a broker
    /// one (retried after a short back-off).
    pub permanent: bool,
}

/// Parks rows of a chunk. A row parked already (its chunk went out again after a crash
/// before the position was committed) stays as it is.
pub async fn park(
    conn: &mut PgConnection,
    rows: &[Parking],
    broker_backoff: Duration,
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let bills: Vec<&str> = rows.iter().map(|r| r.aggregateid.as_str()).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let permanent: Vec<bool> = rows.iter().map(|r| r.permanent).collect();
    sqlx::query(
        "INSERT INTO outbox_parked (seq, id, aggregateid, attempts, last_error, next_attempt_at)
         SELECT f.seq, f.id, f.bill, (f.error IS NOT NULL)::int, f.error,
                clock_timestamp() + CASE WHEN f.error IS NULL THEN interval '0'
                                         WHEN f.permanent THEN interval '1 second'
                                         ELSE make_interval(secs => $6) END
           FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bool[])
                AS f(seq, id, bill, error, permanent)
         ON CONFLICT (seq) DO NOTHING",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&bills)
    .bind(&errors)
    .bind(&permanent)
    .bind(broker_backoff.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records another failed attempt of parked rows: the error, and the next attempt after a
/// capped exponential back-off (`retry_cap` for per-row errors, `broker_cap` for broker
/// ones). Returns each row's failed attempts afterwards.
pub async fn failed_again(
    conn: &mut PgConnection,
    rows: &[Parking],
    retry_cap: Duration,
    broker_cap: Duration,
) -> sqlx::Result<Vec<(Uuid, i32)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let errors: Vec<&str> = rows
        .iter()
        .map(|r| r.error.as_deref().unwrap_or(""))
        .collect();
    let permanent: Vec<bool> = rows.iter().map(|r| r.permanent).collect();
    sqlx::query_as(
        "UPDATE outbox_parked k
            SET attempts = k.attempts + 1,
                last_error = f.error,
                next_attempt_at = clock_timestamp() + LEAST(
                    make_interval(secs => power(2, LEAST(k.attempts, 20))),
                    make_interval(secs => CASE WHEN f.permanent THEN $4 ELSE $5 END))
           FROM UNNEST($1::bigint[], $2::text[], $3::bool[]) AS f(seq, error, permanent)
          WHERE k.seq = f.seq
      RETURNING k.id, k.attempts",
    )
    .bind(&seqs)
    .bind(&errors)
    .bind(&permanent)
    .bind(retry_cap.as_secs_f64())
    .bind(broker_cap.as_secs_f64())
    .fetch_all(conn)
    .await
}

/// Marks parked rows published.
pub async fn published(conn: &mut PgConnection, seqs: &[i64]) -> sqlx::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE outbox_parked SET published_at = clock_timestamp(), next_attempt_at = clock_timestamp()
          WHERE seq = ANY($1)",
    )
    .bind(seqs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` parked rows that are due and first in line for their bill, oldest first.
pub async fn due(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT o.id, o.seq, o.aggregateid, o.topic, o.payload::text AS payload, o.headers::text AS headers,
                o.created_at, false AS blocked
           FROM outbox_parked k
           JOIN outbox o ON o.seq = k.seq
          WHERE k.published_at IS NULL
            AND k.next_attempt_at <= now()
            AND NOT EXISTS (SELECT 1 FROM outbox_parked e
                             WHERE e.aggregateid = k.aggregateid
                               AND e.published_at IS NULL
                               AND e.seq < k.seq)
          ORDER BY k.seq
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// When the next parked row is due (`None`: nothing is waiting).
pub async fn next_due(conn: &mut PgConnection) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float8
           FROM outbox_parked WHERE published_at IS NULL",
    )
    .fetch_one(conn)
    .await
}
