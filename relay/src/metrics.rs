//! The relay's Prometheus metrics, rendered by the ops server's `/metrics`:
//!
//! - `billing_outbox_backlog`: unpublished rows (`outbox_pending`, sampled every 10 s)
//! - `billing_outbox_oldest_unpublished_age_seconds`
//! - `billing_relay_published_total{topic}`
//! - `billing_relay_publish_latency_seconds`: row `created_at` (the writer's transaction) to
//!   the commit of the relay's position past it
//! - `billing_relay_batch_duration_seconds`: read to commit of one chunk
//! - `billing_relay_errors_total{kind}`: `database`, `broker`, `permanent`, `fatal`,
//!   `max_attempts`, `listener`, `retention`

use chrono::Utc;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Registers descriptions (the `# HELP` lines).
pub fn describe() {
    describe_gauge!(
        "billing_outbox_backlog",
        Unit::Count,
        "Unpublished outbox rows."
    );
    describe_gauge!(
        "billing_outbox_oldest_unpublished_age_seconds",
        Unit::Seconds,
        "Age of the oldest unpublished outbox row."
    );
    describe_counter!(
        "billing_relay_published_total",
        Unit::Count,
        "Records published."
    );
    describe_histogram!(
        "billing_relay_publish_latency_seconds",
        Unit::Seconds,
        "From the outbox row's creation to the commit of the relay's position past it."
    );
    describe_histogram!(
        "billing_relay_batch_duration_seconds",
        Unit::Seconds,
        "From reading to committing one chunk."
    );
    describe_counter!(
        "billing_relay_errors_total",
        Unit::Count,
        "Relay errors by kind."
    );
}

/// Counts an error of `kind`.
pub fn error(kind: &'static str, n: u64) {
    counter!("billing_relay_errors_total", "kind" => kind).increment(n);
}

/// Records a committed batch.
pub fn published<'a>(
    rows: impl Iterator<Item = (&'a str, chrono::DateTime<Utc>)>,
    batch: Duration,
) {
    let now = Utc::now();
    let latency = metrics::histogram!("billing_relay_publish_latency_seconds");
    let mut per_topic: Vec<(&str, u64)> = Vec::new();
    for (topic, created_at) in rows {
        latency.record(
            (now - created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        );
        match per_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, n)) => *n += 1,
            None => per_topic.push((topic, 1)),
        }
    }
    for (topic, n) in per_topic {
        counter!("billing_relay_published_total", "topic" => topic.to_owned()).increment(n);
    }
    metrics::histogram!("billing_relay_batch_duration_seconds").record(batch.as_secs_f64());
}

/// Samples the backlog gauges every `interval` until `cancel` fires.
pub async fn sample_backlog(pool: PgPool, interval: Duration, cancel: CancellationToken) {
    loop {
        let sampled = sqlx::query_as::<_, (i64, f64)>(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
               FROM outbox_pending",
        )
        .fetch_one(&pool)
        .await;
        match sampled {
            Ok((backlog, oldest)) => {
                gauge!("billing_outbox_backlog").set(backlog as f64);
                gauge!("billing_outbox_oldest_unpublished_age_seconds").set(oldest.max(0.0));
            }
            Err(e) => {
                tracing::debug!(error = %e, "backlog sample failed");
                error("database", 1);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
