//! Retention: deletes published rows older than the configured age (by `created_at`), in
//! bounded batches with short pauses. A row goes only when the relay's position has settled it
//! (`done` sees its writer) and it is not parked waiting; a published parked row goes with its
//! parking record. Publishing reads only rows `done` does not see and never waits for these
//! deletes, so retention never blocks it.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Looks at the `limit` rows after `after` (by `seq`, oldest first) and deletes those published
/// more than `age` ago. Returns (deleted, the last `seq` looked at, whether any row looked at
/// was older than `age`).
pub async fn purge_batch(
    pool: &PgPool,
    age: Duration,
    limit: i64,
    after: i64,
) -> sqlx::Result<(u64, i64, bool)> {
    let (deleted, last, old): (i64, Option<i64>, bool) = sqlx::query_as(
        "WITH window_ AS MATERIALIZED (
             SELECT seq, txid, created_at < now() - make_interval(secs => $1) AS old
               FROM outbox WHERE seq > $3 ORDER BY seq LIMIT $2),
         gone AS (
             DELETE FROM outbox o
              USING window_ w, outbox_relay r
              WHERE o.seq = w.seq AND w.old AND pg_visible_in_snapshot(w.txid, r.done)
                AND NOT EXISTS (SELECT 1 FROM outbox_parked k
                                 WHERE k.seq = w.seq AND k.published_at IS NULL)
          RETURNING o.seq),
         parked_gone AS (
             DELETE FROM outbox_parked k USING gone WHERE k.seq = gone.seq)
         SELECT (SELECT count(*) FROM gone), (SELECT max(seq) FROM window_),
                EXISTS (SELECT 1 FROM window_ WHERE old)",
    )
    .bind(age.as_secs_f64())
    .bind(limit)
    .bind(after)
    .fetch_one(pool)
    .await?;
    Ok((deleted as u64, last.unwrap_or(after), old))
}

/// Deletes every row published more than `age` ago, `limit` at a time, pausing between
/// batches so the deletes never hog the database. Stops early when `cancel` fires.
pub async fn purge(
    pool: &PgPool,
    age: Duration,
    limit: i64,
    pause: Duration,
    cancel: &CancellationToken,
) -> sqlx::Result<u64> {
    let (mut total, mut after) = (0, i64::MIN);
    loop {
        let (deleted, last, old) = purge_batch(pool, age, limit, after).await?;
        total += deleted;
        // Rows are roughly in `created_at` order by `seq`: a window without an old row means
        // the rest is young too.
        if !old || last == after || cancel.is_cancelled() {
            return Ok(total);
        }
        after = last;
        tokio::select! {
            () = cancel.cancelled() => return Ok(total),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Purges every `interval` until `cancel` fires.
pub async fn run(
    pool: PgPool,
    age: Duration,
    limit: i64,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        match purge(&pool, age, limit, Duration::from_millis(50), &cancel).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(outbox.deleted = n, "retention deleted published rows"),
            Err(e) => {
                tracing::warn!(error = %e, "retention failed; trying again later");
                metrics::counter!("billing_relay_errors_total", "kind" => "retention").increment(1);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
