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

/// Locks the lane, or `None` when another relay holds it. For the rest of the transaction,
/// statements are planned with their parameters' values: a generic plan of [`tick_seqs`]
/// guesses that a third of the table is unpublished and scans all of it (measured: p50
/// commit-to-publish went from 14 ms to 490 ms once the table held 800,000 published rows).
pub async fn lock(conn: &mut PgConnection) -> sqlx::Result<Option<Lane>> {
    sqlx::query_as(
        "SELECT done::text AS done, tick::text AS tick, tick_seq,
                pg_current_snapshot()::text AS now,
                set_config('plan_cache_mode', 'force_custom_plan', true) AS custom_plans
           FROM outbox_relay WHERE lane = 0
            FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await
}

/// The `seq` of every row of the tick after `after`, ascending. The rows are found by writer
/// (`txid`, an index-only scan of `outbox_txid`): not seen by `done` means written by a
/// transaction from `done`'s `xmax` on, or by one `done` saw running: two index ranges, written
/// as a `UNION ALL` because with an `OR` the planner walked the whole index (160 ms on 600,000
/// published rows for an empty tick, instead of 0.2 ms). The comparisons with `xmin`/`xmax`
/// spare most rows the snapshot lookup (a 200,000-row tick: 39 ms instead of 92).
pub async fn tick_seqs(
    conn: &mut PgConnection,
    done: &str,
    tick: &str,
    after: i64,
) -> sqlx::Result<Vec<i64>> {
    // One array rather than a row per `seq`: 200,000 rows cost the relay more to decode than
    // Postgres to find.
    let mut seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT COALESCE(array_agg(seq), '{}')
           FROM (SELECT seq, txid FROM outbox
                  WHERE txid >= pg_snapshot_xmax($1::text::pg_snapshot)
                 UNION ALL
                 SELECT seq, txid FROM outbox
                  WHERE txid = ANY (ARRAY(SELECT pg_snapshot_xip($1::text::pg_snapshot)))) unseen
          WHERE (txid < pg_snapshot_xmin($2::text::pg_snapshot)
                 OR pg_visible_in_snapshot(txid, $2::text::pg_snapshot))
            AND seq > $3",
    )
    .bind(done)
    .bind(tick)
    .bind(after)
    .fetch_one(conn)
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
            AND (o.txid < pg_snapshot_xmin($2::text::pg_snapshot)
                 OR pg_visible_in_snapshot(o.txid, $2::text::pg_snapshot))
            AND (o.txid >= pg_snapshot_xmax($1::text::pg_snapshot)
                 OR NOT pg_visible_in_snapshot(o.txid, $1::text::pg_snapshot))
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
