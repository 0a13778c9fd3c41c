//! Recording outcomes. A batch of finished bills is written in ONE transaction: the state
//! change of every bill (fenced by its claim token, so a worker whose lease was reclaimed
//! changes nothing), its delivery attempt, and the outbox rows that announce a fallback to SMS
//! or a dead letter. Poison records become dead-letter outbox rows in the same transaction.
//! The consumer never produces to Kafka itself; the relay publishes the outbox.

use crate::claim::{idempotency_key, ClaimedBill};
use chrono::{DateTime, Utc};
use shared::config::Topics;
use shared::domain::{BillId, Channel, EventId};
use shared::events::{event_type, BillEvent, ChannelError, DeadLetter, SourceRecord};
use shared::outbox::{self, NewOutboxEvent};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// Dead-letter reasons.
pub mod reason {
    pub const CHANNELS_EXHAUSTED: &str = "channels_exhausted";
    pub const UNDECRYPTABLE: &str = "undecryptable";
    pub const POISON_RECORD: &str = "poison_record";
    pub const UNKNOWN_BILL: &str = "unknown_bill";
    pub const LEASE_EXPIRED: &str = "lease_expired";
}

/// The claim an outcome belongs to: what the fenced update and the history row need.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub bill_id: Uuid,
    pub token: Uuid,
    pub channel: Channel,
    pub attempts: i32,
    pub replay_count: i32,
    pub traceparent: Option<String>,
    /// The error that moved the bill to this channel, if any.
    pub previous_error: Option<String>,
    pub started_at: DateTime<Utc>,
}

impl Attempt {
    pub fn of(bill: &ClaimedBill, started_at: DateTime<Utc>) -> Self {
        Self {
            bill_id: bill.id,
            token: bill.token,
            channel: bill.channel,
            attempts: bill.attempts,
            replay_count: bill.replay_count,
            traceparent: bill.traceparent.clone(),
            previous_error: bill.last_error.clone(),
            started_at,
        }
    }
}

/// What happened to one record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The provider delivered (or had already delivered this key).
    Sent { attempt: Attempt },
    /// The channel failed (permanently, or transiently after retries). `error` holds no PII.
    Failed { attempt: Attempt, error: String },
    /// The bill's recipient data cannot be decrypted: DEAD, never sent.
    Undecryptable { attempt: Attempt, error: String },
    /// The record names no valid bill or is not valid JSON.
    Poison {
        bill_id: Option<Uuid>,
        channel: Channel,
        reason: &'static str,
        error: String,
    },
    /// The bill was not ours to send (claimed elsewhere, already sent or dead).
    Skipped,
}

/// One finished record with where it was read.
#[derive(Debug, Clone)]
pub struct Finished {
    pub source: SourceRecord,
    pub outcome: Outcome,
}

/// What the write did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Sent,
    FellBack,
    Dead,
    Poisoned,
    Skipped,
    /// Our lease was reclaimed before the outcome was written: nothing changed.
    Fenced,
}

/// Writes a batch of outcomes in one transaction; results are in input order.
#[tracing::instrument(level = "debug", skip_all, fields(batch = batch.len()))]
pub async fn write_batch(
    pool: &PgPool,
    topics: &Topics,
    batch: &[Finished],
) -> sqlx::Result<Vec<Written>> {
    // The per-bill target state, for the fenced update.
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    let mut statuses = Vec::new();
    let mut channels = Vec::new();
    let mut errors: Vec<Option<&str>> = Vec::new();
    for f in batch {
        let (attempt, status, channel, error) = match &f.outcome {
            Outcome::Sent { attempt } => (attempt, "SENT", attempt.channel, None),
            Outcome::Failed { attempt, error } => match attempt.channel.fallback() {
                Some(next) => (attempt, "PENDING", next, Some(error.as_str())),
                None => (attempt, "DEAD", attempt.channel, Some(error.as_str())),
            },
            Outcome::Undecryptable { attempt, error } => {
                (attempt, "DEAD", attempt.channel, Some(error.as_str()))
            }
            Outcome::Poison { .. } | Outcome::Skipped => continue,
        };
        ids.push(attempt.bill_id);
        tokens.push(attempt.token);
        statuses.push(status);
        channels.push(channel.as_str());
        errors.push(error);
    }

    let mut tx = pool.begin().await?;
    let applied: HashSet<(Uuid, Uuid)> = if ids.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_as::<_, (Uuid, Uuid)>(
            "UPDATE bills b
             SET status = r.status, channel = r.channel,
                 last_error = COALESCE(r.error, b.last_error),
                 lease_expiries = CASE WHEN r.channel <> b.channel THEN 0 ELSE b.lease_expiries END,
                 claim_token = NULL, lease_until = NULL, updated_at = now(),
                 sent_at = CASE WHEN r.status = 'SENT' THEN now() ELSE b.sent_at END,
                 dead_at = CASE WHEN r.status = 'DEAD' THEN now() ELSE b.dead_at END
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                  AS r(id, token, status, channel, error)
             WHERE b.id = r.id AND b.claim_token = r.token AND b.status = 'SENDING'
             RETURNING b.id, r.token",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&statuses)
        .bind(&channels)
        .bind(&errors)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };

    let mut history = History::default();
    let mut events = Vec::new();
    let mut written = Vec::with_capacity(batch.len());
    for f in batch {
        let w = match &f.outcome {
            Outcome::Skipped => Written::Skipped,
            Outcome::Poison {
                bill_id,
                channel,
                reason,
                error,
            } => {
                events.push(poison_event(
                    &topics.dlt,
                    *bill_id,
                    *channel,
                    reason,
                    error,
                    &f.source,
                ));
                Written::Poisoned
            }
            Outcome::Sent { attempt }
            | Outcome::Failed { attempt, .. }
            | Outcome::Undecryptable { attempt, .. } => {
                if !applied.contains(&(attempt.bill_id, attempt.token)) {
                    written.push(Written::Fenced);
                    continue;
                }
                match &f.outcome {
                    Outcome::Sent { .. } => {
                        history.push(attempt, "SENT", None);
                        Written::Sent
                    }
                    Outcome::Failed { error, .. } => {
                        history.push(attempt, "FAILED", Some(error));
                        match attempt.channel.fallback() {
                            Some(next) => {
                                events.push(request_event(topics, attempt, next));
                                Written::FellBack
                            }
                            None => {
                                let dl = dead_letter(
                                    attempt,
                                    reason::CHANNELS_EXHAUSTED,
                                    error,
                                    &f.source,
                                );
                                events.push(dead_event(&topics.dlt, attempt, dl));
                                Written::Dead
                            }
                        }
                    }
                    Outcome::Undecryptable { error, .. } => {
                        history.push(attempt, "FAILED", Some(error));
                        let dl = dead_letter(attempt, reason::UNDECRYPTABLE, error, &f.source);
                        events.push(dead_event(&topics.dlt, attempt, dl));
                        Written::Dead
                    }
                    Outcome::Poison { .. } | Outcome::Skipped => unreachable!("handled above"),
                }
            }
        };
        written.push(w);
    }
    history.insert(&mut tx).await?;
    outbox::insert(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(written)
}

/// The request for `next` after `attempt` failed on its channel.
fn request_event(topics: &Topics, attempt: &Attempt, next: Channel) -> NewOutboxEvent {
    let ty = match next {
        Channel::Email => event_type::EMAIL_REQUESTED,
        Channel::Sms => event_type::SMS_REQUESTED,
    };
    NewOutboxEvent::bill(
        topics.for_channel(next),
        ty,
        BillId(attempt.bill_id),
        next,
        attempt.attempts,
        attempt.replay_count,
        attempt.traceparent.as_deref(),
        None,
    )
}

fn dead_letter(attempt: &Attempt, why: &str, error: &str, source: &SourceRecord) -> DeadLetter {
    let mut errors = Vec::new();
    // A bill on SMS got there because email failed; that error is the bill's previous error.
    if let (Some(prev), Some(prev_channel)) =
        (&attempt.previous_error, previous_channel(attempt.channel))
    {
        errors.push(ChannelError {
            channel: prev_channel,
            error: prev.clone(),
        });
    }
    errors.push(ChannelError {
        channel: attempt.channel,
        error: error.to_owned(),
    });
    DeadLetter {
        reason: why.to_owned(),
        errors,
        attempts: attempt.attempts,
        source: Some(source.clone()),
    }
}

fn previous_channel(channel: Channel) -> Option<Channel> {
    Channel::ALL
        .into_iter()
        .find(|c| c.fallback() == Some(channel))
}

/// A dead-letter event of a bill.
pub fn dead_event(dlt_topic: &str, attempt: &Attempt, dl: DeadLetter) -> NewOutboxEvent {
    NewOutboxEvent::bill(
        dlt_topic,
        event_type::DEAD,
        BillId(attempt.bill_id),
        attempt.channel,
        attempt.attempts,
        attempt.replay_count,
        attempt.traceparent.as_deref(),
        Some(dl),
    )
}

/// A dead-letter event of a record that names no valid bill: the value has the shape of a
/// [`BillEvent`] (nil bill id when the record had none), with the reason and the source.
fn poison_event(
    dlt_topic: &str,
    bill_id: Option<Uuid>,
    channel: Channel,
    why: &str,
    error: &str,
    source: &SourceRecord,
) -> NewOutboxEvent {
    let id = EventId::new();
    let bill = bill_id.unwrap_or(Uuid::nil());
    let event = BillEvent {
        event_id: id.0,
        event_type: event_type::DEAD.to_owned(),
        bill_id: bill,
        channel,
        attempt: 0,
        replay_count: 0,
        occurred_at: Utc::now(),
        dead_letter: Some(DeadLetter {
            reason: why.to_owned(),
            errors: vec![ChannelError {
                channel,
                error: error.to_owned(),
            }],
            attempts: 0,
            source: Some(source.clone()),
        }),
    };
    // Without a bill id the key says where the record came from, so retries of one poison
    // record keep one key.
    let aggregate = match bill_id {
        Some(b) => b.to_string(),
        None => format!(
            "poison:{}:{}:{}",
            source.topic, source.partition, source.offset
        ),
    };
    NewOutboxEvent::new(
        id,
        dlt_topic,
        aggregate,
        event_type::DEAD,
        serde_json::to_value(&event).unwrap_or_default(),
        None,
    )
}

/// Rows for `delivery_attempts`, inserted with one statement.
#[derive(Default)]
pub struct History {
    bill_ids: Vec<Uuid>,
    channels: Vec<&'static str>,
    attempts: Vec<i32>,
    replays: Vec<i32>,
    outcomes: Vec<&'static str>,
    errors: Vec<Option<String>>,
    keys: Vec<String>,
    started: Vec<DateTime<Utc>>,
}

impl History {
    pub fn push(&mut self, a: &Attempt, outcome: &'static str, error: Option<&str>) {
        self.bill_ids.push(a.bill_id);
        self.channels.push(a.channel.as_str());
        self.attempts.push(a.attempts);
        self.replays.push(a.replay_count);
        self.outcomes.push(outcome);
        self.errors.push(error.map(str::to_owned));
        self.keys
            .push(idempotency_key(a.bill_id, a.channel, a.replay_count));
        self.started.push(a.started_at);
    }

    pub async fn insert(&self, conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        if self.bill_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO delivery_attempts
                 (bill_id, channel, attempt, replay_count, outcome, error, idempotency_key, started_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[],
                                  $7::text[], $8::timestamptz[])",
        )
        .bind(&self.bill_ids)
        .bind(&self.channels)
        .bind(&self.attempts)
        .bind(&self.replays)
        .bind(&self.outcomes)
        .bind(&self.errors)
        .bind(&self.keys)
        .bind(&self.started)
        .execute(conn)
        .await?;
        Ok(())
    }
}
