//! Retention: deletes published rows (`outbox_published`) older than the configured age, in
//! bounded batches with short pauses. It never touches `outbox`, which claims lock, and skips
//! rows another relay's retention holds, so it never blocks publishing.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Deletes at most `limit` rows published more than `age` ago. Returns how many went.
pub async fn purge_batch(pool: &PgPool, age: Duration, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM outbox_published WHERE id IN (
             SELECT id FROM outbox_published
              WHERE published_at < now() - make_interval(secs => $1)
              ORDER BY published_at
              LIMIT $2
                FOR UPDATE SKIP LOCKED)",
    )
    .bind(age.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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
    let mut total = 0;
    loop {
        let deleted = purge_batch(pool, age, limit).await?;
        total += deleted;
        if deleted < limit as u64 || cancel.is_cancelled() {
            return Ok(total);
        }
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
