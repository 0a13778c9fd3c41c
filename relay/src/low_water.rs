//! The claim's lower bound on `seq`. Published rows leave the outbox, but their dead entries
//! stay in the `seq` index until vacuum; with planner statistics from before a backlog
//! drained, Postgres may even walk the whole index. Either way a claim that starts from the
//! first row would step over every row published before it, which makes draining a large
//! backlog quadratic. So claims start at a low-water mark:
//! the smallest unpublished `seq`, minus a margin.
//!
//! The mark only bounds the scan; ordering never depends on it (the claim's `NOT EXISTS`
//! looks at every earlier row of the bill). A row whose writer committed late, with a `seq`
//! below the mark (a transaction that stayed open while more than `MARGIN` later rows were
//! written and published), is found by the next full refresh, which recomputes the mark from
//! scratch: nothing is left behind, it is only published up to `FULL_EVERY` later. The same
//! holds for a row whose retry time comes after the mark passed it.

use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How far below the smallest unpublished `seq` claims start, for writers that commit out of
/// `seq` order.
pub const MARGIN: i64 = 1000;
/// How often the mark is recomputed from the start of the table.
pub const FULL_EVERY: Duration = Duration::from_secs(10);
/// How often it is advanced from its current value.
pub const STEP_EVERY: Duration = Duration::from_millis(100);

/// The smallest `seq` at or above `from` of an outbox row that is due (not waiting out a
/// retry), or one past the largest `seq` when there is none; with an empty outbox, one past
/// the last `seq` handed out (`outbox_seq_seq`, the identity's sequence), which may belong to
/// a writer that has not committed yet: the margin and the full refresh cover that writer. Rows waiting out a retry do not
/// hold the mark back (a row that keeps failing would otherwise pin every claim's scan to it
/// for good); the full recompute finds them once they are due.
pub async fn smallest_unpublished(pool: &PgPool, from: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(
             (SELECT min(seq) FROM outbox
               WHERE seq >= $1 AND (next_attempt_at IS NULL OR next_attempt_at <= now())),
             (SELECT max(seq) + 1 FROM outbox WHERE seq >= $1),
             (SELECT GREATEST(last_value + 1, $1) FROM outbox_seq_seq),
             $1)",
    )
    .bind(from)
    .fetch_one(pool)
    .await
}

/// Recomputes `mark` from the start of the table. The relay does this once before its first
/// claim, so that a restart does not begin by scanning every published row.
pub async fn refresh_full(pool: &PgPool, mark: &AtomicI64) -> sqlx::Result<()> {
    let smallest = smallest_unpublished(pool, 0).await?;
    mark.store((smallest - MARGIN).max(0), Ordering::Relaxed);
    Ok(())
}

/// Keeps `mark` up to date until `cancel` fires.
pub async fn run(pool: PgPool, mark: Arc<AtomicI64>, cancel: CancellationToken) {
    let mut last_full = Instant::now();
    loop {
        let full = last_full.elapsed() >= FULL_EVERY;
        let from = if full {
            0
        } else {
            mark.load(Ordering::Relaxed)
        };
        match smallest_unpublished(&pool, from).await {
            Ok(smallest) => {
                let next = (smallest - MARGIN).max(0);
                if full {
                    mark.store(next, Ordering::Relaxed);
                    last_full = Instant::now();
                } else {
                    mark.fetch_max(next, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "low-water refresh failed");
                crate::metrics::error("database", 1);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(STEP_EVERY) => {}
        }
    }
}
