//! The relay's position in the outbox, read as a log (see migration 4 for why).
//!
//! `outbox_relay` holds two Postgres snapshots: every row whose writer `done` sees as
//! committed is settled, and `tick`, when set, is the snapshot being worked through, of which
//! the rows up to `tick_seq` are settled. The rows of a tick are those its snapshot sees and
//! `done` does not: exactly the rows committed in between, however late a writer committed
//! relative to the `seq` it was handed. They are published in `seq` order, in chunks; after
//! each chunk one update records the new `tick_seq`, and after the last `done` becomes `tick`.
//!
//! Why this keeps a bill's events in order: a writer adds a bill's next event only after the
//! transaction with its previous event committed (every writer locks the bill row first), so
//! the previous event is visible in every snapshot that sees the next one (same or earlier
//! tick) and has the smaller `seq` (handed out before its commit, the next one after).
//!
//! Only the relay holding the lane row (`FOR UPDATE SKIP LOCKED`, one transaction per chunk)
//! publishes; another relay finds it locked and stands by, so no chunk goes out twice in
//! normal operation.
//!
//! Snapshots travel as text (`pg_snapshot`'s `xmin:xmax:xip,...`) and are cast in SQL.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// One outbox row, as it goes to Kafka.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub seq: i64,
    /// The record key (the bill id).
    pub aggregateid: String,
    pub topic: String,
    /// The record value: the payload's JSON text as Postgres renders `jsonb`.
    pub payload: String,
    /// The `headers` JSON object as text, turned into record headers when sent (see
    /// [`crate::publish::header_pairs`]): decoding it into a map here cost more CPU than
    /// sending the record.
    pub headers: String,
    pub created_at: DateTime<Utc>,
    /// An earlier event of the same bill is parked: this one must wait behind it.
    pub blocked: bool,
}

/// The lane row as locked at the start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lane {
    pub done: String,
    pub tick: Option<String>,
    pub tick_seq: Option<i64>,
    /// The snapshot of the locking statement: the next tick when none is in progress.
    pub now: String,
}

/// Locks the lane, or `None` when another relay holds it.
pub async fn lock(conn: &mut PgConnection) -> sqlx::Result<Option<Lane>> {
    sqlx::query_as(
        "SELECT done::text AS done, tick::text AS tick, tick_seq,
                pg_current_snapshot()::text AS now
           FROM outbox_relay WHERE lane = 0
            FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await
}

/// The `seq` of every row of the tick after `after`, ascending. The rows are found by writer
/// (`txid`): not seen by `done` means written by a transaction from `done`'s `xmax` on, or by
/// one `done` saw running. Materialized, so the planner walks the `txid` index rather than
/// every row after `after` (published rows stay in the table until retention).
pub async fn tick_seqs(
    conn: &mut PgConnection,
    done: &str,
    tick: &str,
    after: i64,
) -> sqlx::Result<Vec<i64>> {
    let mut seqs: Vec<i64> = sqlx::query_scalar(
        "WITH unseen AS MATERIALIZED (
             SELECT seq, txid FROM outbox
              WHERE txid >= pg_snapshot_xmax($1::text::pg_snapshot)
                 OR txid = ANY (ARRAY(SELECT pg_snapshot_xip($1::text::pg_snapshot))))
         SELECT seq FROM unseen
          WHERE seq > $3 AND pg_visible_in_snapshot(txid, $2::text::pg_snapshot)",
    )
    .bind(done)
    .bind(tick)
    .bind(after)
    .fetch_all(conn)
    .await?;
    // Sorting here spares Postgres a sort (and its spill to disk for a large tick).
    seqs.sort_unstable();
    Ok(seqs)
}

/// The rows of the tick with `seq` in `first..=last`, ascending: a range scan of the `seq`
/// index. `blocked` is looked up in `outbox_parked` once per statement (a hashed subplan).
pub async fn fetch(
    conn: &mut PgConnection,
    done: &str,
    tick: &str,
    first: i64,
    last: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT o.id, o.seq, o.aggregateid, o.topic, o.payload::text AS payload, o.headers::text AS headers,
                o.created_at,
                o.aggregateid IN (SELECT aggregateid FROM outbox_parked
                                   WHERE published_at IS NULL) AS blocked
           FROM outbox o
          WHERE o.seq BETWEEN $3 AND $4
            AND pg_visible_in_snapshot(o.txid, $2::text::pg_snapshot)
            AND NOT pg_visible_in_snapshot(o.txid, $1::text::pg_snapshot)
          ORDER BY o.seq",
    )
    .bind(done)
    .bind(tick)
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await
}

/// Records that the tick is settled up to `seq`, or, when `finished`, entirely (`done`
/// becomes `tick`).
pub async fn advance(
    conn: &mut PgConnection,
    tick: &str,
    seq: i64,
    finished: bool,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox_relay
            SET done = CASE WHEN $3 THEN $1::text::pg_snapshot ELSE done END,
                tick = CASE WHEN $3 THEN NULL ELSE $1::text::pg_snapshot END,
                tick_seq = CASE WHEN $3 THEN NULL ELSE $2 END,
                updated_at = now()
          WHERE lane = 0",
    )
    .bind(tick)
    .bind(seq)
    .bind(finished)
    .execute(conn)
    .await?;
    Ok(())
}
