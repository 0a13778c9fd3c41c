//! One claim loop: claim a batch, send it all, await every delivery report, mark the published
//! rows and record the failed ones, commit; one transaction per batch, so the claim's row locks
//! are held until the outcome is durable. Several loops run at once (pipelining: while one
//! batch awaits its reports another is claimed); `SKIP LOCKED` keeps them apart.

use crate::backoff::Backoff;
use crate::claim::{self, Failure};
use crate::publish::{self, ErrorClass};
use crate::Shared;
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub claimed: usize,
    pub published: usize,
    /// Rows left unpublished for a broker reason (retried after the worker's back-off).
    pub retriable: usize,
    /// Rows recorded with a per-row error (retried after their own back-off).
    pub permanent: usize,
    /// The producer reported a fatal error and was rebuilt.
    pub fatal: bool,
}

/// Runs batches until `cancel` fires. A batch in flight when it fires is finished (reports
/// awaited, outcome committed) before the loop returns.
pub(crate) async fn run(
    shared: Arc<Shared>,
    worker: usize,
    mut wake: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.options.max_backoff);
    let span = tracing::info_span!("relay_worker", worker);
    async move {
        while !cancel.is_cancelled() {
            // Mark the wake-ups seen *before* claiming: one arriving during the claim makes
            // `changed()` below return at once, so no notification is lost.
            wake.borrow_and_update();
            match process_batch(&shared).await {
                Ok(outcome) if outcome.retriable > 0 || outcome.fatal => {
                    if !backoff.sleep(&cancel).await {
                        break;
                    }
                }
                Ok(outcome) if outcome.claimed == 0 => {
                    backoff.reset();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        _ = wake.changed() => {}
                        () = tokio::time::sleep(shared.options.poll_interval) => {}
                    }
                }
                Ok(_) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "relay batch failed; backing off");
                    crate::metrics::error("database", 1);
                    if !backoff.sleep(&cancel).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!("relay worker stopped");
    }
    .instrument(span)
    .await
}

/// Claims, publishes and settles one batch.
pub(crate) async fn process_batch(shared: &Shared) -> anyhow::Result<BatchOutcome> {
    let started = Instant::now();
    let mut tx = shared
        .pool
        .begin()
        .await
        .context("failed to begin the claim transaction")?;
    let rows = claim::claim(
        &mut tx,
        shared.options.batch_size,
        shared.low_water.load(Ordering::Relaxed),
        shared.in_flight_ranges.hull(),
    )
    .await
    .context("failed to claim outbox rows")?;
    if rows.is_empty() {
        tx.rollback()
            .await
            .context("failed to end an empty claim")?;
        return Ok(BatchOutcome::default());
    }
    let _in_flight = shared.in_flight_ranges.hold(&rows, &shared.stats.in_flight);

    let claimed_at = Instant::now();
    let producer = shared.publisher.producer().await;
    let results = publish::send_all(&producer, &rows).await;
    let delivered_at = Instant::now();

    let mut outcome = BatchOutcome {
        claimed: rows.len(),
        ..Default::default()
    };
    let mut published = Vec::with_capacity(rows.len());
    let mut failures = Vec::new();
    let mut first_error: Option<String> = None;
    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(()) => published.push(row.id),
            Err(e) => {
                let permanent = e.class == ErrorClass::Permanent;
                if permanent {
                    outcome.permanent += 1;
                } else {
                    outcome.retriable += 1;
                }
                outcome.fatal |= e.class == ErrorClass::Fatal;
                first_error.get_or_insert_with(|| e.message.clone());
                failures.push(Failure {
                    id: row.id,
                    error: e.message,
                    permanent,
                });
            }
        }
    }
    let fatal = publish::fatal_error(&producer);
    outcome.fatal |= fatal.is_some();
    outcome.published = published.len();

    claim::mark_published(&mut tx, &published)
        .await
        .context("failed to mark rows published")?;
    let attempts = claim::record_failures(&mut tx, &failures, shared.options.row_retry_cap)
        .await
        .context("failed to record publish failures")?;
    if shared.options.async_commit {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .context("failed to set synchronous_commit")?;
    }
    let marked_at = Instant::now();
    tx.commit().await.context("failed to commit the batch")?;
    tracing::debug!(
        outbox.rows = rows.len(),
        claim_ms = (claimed_at - started).as_secs_f64() * 1e3,
        send_ms = (delivered_at - claimed_at).as_secs_f64() * 1e3,
        mark_ms = (marked_at - delivered_at).as_secs_f64() * 1e3,
        commit_ms = marked_at.elapsed().as_secs_f64() * 1e3,
        "batch committed"
    );

    log_published(&rows, &published, started.elapsed());

    let by_id: std::collections::HashSet<_> = published.iter().collect();
    crate::metrics::published(
        rows.iter()
            .filter(|r| by_id.contains(&r.id))
            .map(|r| (r.topic.as_str(), r.created_at)),
        started.elapsed(),
    );
    shared
        .stats
        .published
        .fetch_add(outcome.published as u64, Ordering::Relaxed);
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    if outcome.retriable > 0 {
        crate::metrics::error("broker", outcome.retriable as u64);
        shared
            .stats
            .retriable_failures
            .fetch_add(outcome.retriable as u64, Ordering::Relaxed);
        tracing::warn!(
            outbox.rows = outcome.retriable,
            error = first_error.as_deref().unwrap_or(""),
            "records not delivered; rows stay unpublished and are retried"
        );
    }
    if outcome.permanent > 0 {
        crate::metrics::error("permanent", outcome.permanent as u64);
        shared
            .stats
            .permanent_failures
            .fetch_add(outcome.permanent as u64, Ordering::Relaxed);
        let over = attempts
            .iter()
            .filter(|(_, n)| *n >= shared.options.max_publish_attempts);
        for (id, n) in over {
            crate::metrics::error("max_attempts", 1);
            tracing::error!(outbox.id = %id, attempts = n, "outbox row keeps failing to publish");
        }
        tracing::warn!(
            outbox.rows = outcome.permanent,
            error = first_error.as_deref().unwrap_or(""),
            "records rejected; rows recorded with their error and retried later"
        );
    }
    if outcome.fatal {
        crate::metrics::error("fatal", 1);
        tracing::error!(
            error = fatal.as_deref().unwrap_or("fatal"),
            "producer fatal error"
        );
        if shared.publisher.rebuild(&producer).await? {
            shared
                .stats
                .producer_rebuilds
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(outcome)
}

/// One info line per committed batch; one debug line per published record with its `bill.id`
/// and `trace_id` (from the row's `traceparent` header). Per-record lines at info would be ten
/// thousand lines a second at full rate; `RUST_LOG=info,billing_relay=debug` turns them on to
/// follow a bill's trace through the relay.
fn log_published(rows: &[claim::OutboxRow], published: &[uuid::Uuid], took: Duration) {
    if published.is_empty() {
        return;
    }
    tracing::info!(
        outbox.rows = rows.len(),
        outbox.published = published.len(),
        duration_ms = took.as_secs_f64() * 1e3,
        "batch published"
    );
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let published: std::collections::HashSet<_> = published.iter().collect();
    for row in rows.iter().filter(|r| published.contains(&r.id)) {
        let header = |name: &str| row.headers.0.get(name).and_then(|v| v.as_str());
        tracing::debug!(
            bill.id = %row.aggregateid,
            trace_id = header("traceparent")
                .and_then(shared::telemetry::trace_id)
                .unwrap_or(""),
            outbox.id = %row.id,
            event_type = header("event_type").unwrap_or(""),
            kafka.topic = %row.topic,
            "record published"
        );
    }
}
