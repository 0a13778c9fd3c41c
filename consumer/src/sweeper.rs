//! The sweeper: bills whose lease expired while `SENDING` (their worker crashed or stalled) go
//! back to `PENDING` with a new outbox row, so the relay re-publishes them. A bill whose lease
//! expired `MAX_LEASE_EXPIRIES` times on one channel moves to the next channel, or to DEAD with
//! a dead-letter row. Every expiry is recorded as an `EXPIRED` delivery attempt. Batches are
//! claimed with `FOR UPDATE SKIP LOCKED`, so several consumers can sweep at once.

use crate::outcome::{dead_event, reason, Attempt, History};
use chrono::{DateTime, Utc};
use shared::config::Topics;
use shared::domain::{BillId, Channel};
use shared::events::{event_type, ChannelError, DeadLetter};
use shared::outbox::{self, NewOutboxEvent};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BATCH: i64 = 500;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Back to PENDING on the same channel.
    pub requeued: u64,
    /// Moved to the next channel.
    pub moved: u64,
    pub dead: u64,
}

#[derive(sqlx::FromRow)]
struct Expired {
    id: Uuid,
    channel: String,
    attempts: i32,
    lease_expiries: i32,
    replay_count: i32,
    traceparent: Option<String>,
    last_error: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Sweeps every expired lease, in batches, until none is left.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn sweep_once(
    pool: &PgPool,
    topics: &Topics,
    max_lease_expiries: i32,
) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    loop {
        let n = sweep_batch(pool, topics, max_lease_expiries, &mut report).await?;
        if n < BATCH as usize {
            return Ok(report);
        }
    }
}

async fn sweep_batch(
    pool: &PgPool,
    topics: &Topics,
    max_lease_expiries: i32,
    report: &mut SweepReport,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Expired> = sqlx::query_as(
        "SELECT id, channel, attempts, lease_expiries, replay_count, traceparent, last_error, updated_at
         FROM bills WHERE status = 'SENDING' AND lease_until < now()
         ORDER BY lease_until LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut ids, mut statuses, mut channels, mut expiries, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut history = History::default();
    let mut events = Vec::new();
    for row in &rows {
        let channel: Channel = row.channel.parse().map_err(anyhow::Error::msg)?;
        let attempt = Attempt {
            bill_id: row.id,
            token: Uuid::nil(),
            channel,
            attempts: row.attempts,
            replay_count: row.replay_count,
            traceparent: row.traceparent.clone(),
            previous_error: row.last_error.clone(),
            started_at: row.updated_at,
        };
        let count = row.lease_expiries + 1;
        let error = format!("lease expired ({count} of {max_lease_expiries}) on {channel}");
        history.push(&attempt, "EXPIRED", Some(&error));
        ids.push(row.id);
        errors.push(error.clone());
        if count < max_lease_expiries {
            statuses.push("PENDING");
            channels.push(channel.as_str());
            expiries.push(count);
            events.push(request(topics, &attempt, channel));
            report.requeued += 1;
        } else if let Some(next) = channel.fallback() {
            statuses.push("PENDING");
            channels.push(next.as_str());
            expiries.push(0);
            events.push(request(topics, &attempt, next));
            report.moved += 1;
        } else {
            statuses.push("DEAD");
            channels.push(channel.as_str());
            expiries.push(count);
            let mut errs = Vec::new();
            if let Some(prev) = &row.last_error {
                errs.push(ChannelError {
                    channel: Channel::Email,
                    error: prev.clone(),
                });
            }
            errs.push(ChannelError { channel, error });
            let dl = DeadLetter {
                reason: reason::LEASE_EXPIRED.into(),
                errors: errs,
                attempts: row.attempts,
                source: None,
            };
            events.push(dead_event(&topics.dlt, &attempt, dl));
            report.dead += 1;
        }
    }
    sqlx::query(
        "UPDATE bills b
         SET status = r.status, channel = r.channel, lease_expiries = r.expiries, last_error = r.error,
             claim_token = NULL, lease_until = NULL, updated_at = now(),
             dead_at = CASE WHEN r.status = 'DEAD' THEN now() ELSE b.dead_at END
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[])
              AS r(id, status, channel, expiries, error)
         WHERE b.id = r.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&channels)
    .bind(&expiries)
    .bind(&errors)
    .execute(&mut *tx)
    .await?;
    history.insert(&mut tx).await?;
    outbox::insert(&mut tx, &events).await?;
    tx.commit().await?;
    // Rare (a worker crashed or stalled), so one line per bill, after the change is durable.
    for ((row, status), channel) in rows.iter().zip(&statuses).zip(&channels) {
        tracing::info!(
            bill.id = %row.id,
            trace_id = row
                .traceparent
                .as_deref()
                .and_then(shared::telemetry::trace_id)
                .unwrap_or(""),
            from = %row.channel,
            status = *status,
            channel = *channel,
            "bill lease expired; handed back"
        );
    }
    Ok(rows.len())
}

/// Returns bills this process claimed but did not finish (shutdown out of grace) to PENDING
/// with a new outbox row, fenced by their claim tokens. Returns how many were handed back.
#[tracing::instrument(level = "debug", skip_all, fields(leases = leases.len()))]
pub async fn hand_back(
    pool: &PgPool,
    topics: &Topics,
    leases: &[(Uuid, Uuid)],
) -> anyhow::Result<usize> {
    if leases.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = leases.iter().map(|l| l.0).collect();
    let tokens: Vec<Uuid> = leases.iter().map(|l| l.1).collect();
    let mut tx = pool.begin().await?;
    let rows: Vec<Expired> = sqlx::query_as(
        "WITH old AS (
             SELECT b.id, b.updated_at FROM bills b
             JOIN UNNEST($1::uuid[], $2::uuid[]) AS r(id, token) ON b.id = r.id AND b.claim_token = r.token
             WHERE b.status = 'SENDING'
             FOR UPDATE OF b
         )
         UPDATE bills b
         SET status = 'PENDING', claim_token = NULL, lease_until = NULL, updated_at = now()
         FROM old
         WHERE b.id = old.id
         RETURNING b.id, b.channel, b.attempts, b.lease_expiries, b.replay_count, b.traceparent,
                   b.last_error, old.updated_at",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    let mut history = History::default();
    let mut events = Vec::new();
    for row in &rows {
        let channel: Channel = row.channel.parse().map_err(anyhow::Error::msg)?;
        let attempt = Attempt {
            bill_id: row.id,
            token: Uuid::nil(),
            channel,
            attempts: row.attempts,
            replay_count: row.replay_count,
            traceparent: row.traceparent.clone(),
            previous_error: row.last_error.clone(),
            started_at: row.updated_at,
        };
        history.push(&attempt, "EXPIRED", Some("handed back at shutdown"));
        events.push(request(topics, &attempt, channel));
    }
    history.insert(&mut tx).await?;
    outbox::insert(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(rows.len())
}

fn request(topics: &Topics, attempt: &Attempt, channel: Channel) -> NewOutboxEvent {
    let ty = match channel {
        Channel::Email => event_type::EMAIL_REQUESTED,
        Channel::Sms => event_type::SMS_REQUESTED,
    };
    NewOutboxEvent::bill(
        topics.for_channel(channel),
        ty,
        BillId(attempt.bill_id),
        channel,
        attempt.attempts,
        attempt.replay_count,
        attempt.traceparent.as_deref(),
        None,
    )
}

/// Sweeps every `interval` until `cancel` fires. Errors are logged and retried next time.
pub async fn run(
    pool: PgPool,
    topics: Topics,
    max_lease_expiries: i32,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep_once(&pool, &topics, max_lease_expiries).await {
            Ok(r) => {
                let total = r.requeued + r.moved + r.dead;
                if total > 0 {
                    metrics::counter!(crate::metrics::SWEEPS).increment(total);
                    // Bills the sweeper kills are dead letters too: the DLT rate counts them.
                    metrics::counter!(crate::metrics::DLT, "reason" => reason::LEASE_EXPIRED)
                        .increment(r.dead);
                    tracing::info!(
                        requeued = r.requeued,
                        moved = r.moved,
                        dead = r.dead,
                        "swept expired leases"
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "sweep failed; retrying next interval"
            ),
        }
    }
}
