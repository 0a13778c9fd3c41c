//! Writing outbox rows. Every state change that announces itself on Kafka calls [`insert`]
//! inside the same transaction as the change; the relay is the only Kafka producer.
//!
//! Relays sleep on `LISTEN outbox_inserted` (and poll as a fallback). Writers wake them:
//! [`insert`] notifies inside the caller's transaction, which is right for batched writers;
//! high-rate single-row writers (the API) use [`RelayWaker`] instead, because a NOTIFY inside a
//! transaction serialises commits on a database-wide lock.

use crate::domain::{BillId, Channel, EventId};
use crate::events::{BillEvent, DeadLetter, AGGREGATE_BILL};
use chrono::Utc;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Shortest gap between two notifications of one [`RelayWaker`]: bounds the wake latency
/// it adds and the NOTIFY load it puts on Postgres.
const WAKE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// The channel relays listen on.
pub const NOTIFY_CHANNEL: &str = "outbox_inserted";

/// One outbox row to be written.
#[derive(Debug, Clone)]
pub struct NewOutboxEvent {
    pub id: EventId,
    pub topic: String,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: Value,
    pub headers: Value,
}

impl NewOutboxEvent {
    /// A bill event for `topic`. The `traceparent` (W3C) travels as a Kafka header.
    #[allow(clippy::too_many_arguments)]
    pub fn bill(
        topic: &str,
        event_type: &str,
        bill_id: BillId,
        channel: Channel,
        attempt: i32,
        replay_count: i32,
        traceparent: Option<&str>,
        dead_letter: Option<DeadLetter>,
    ) -> Self {
        let id = EventId::new();
        let event = BillEvent {
            event_id: id.0,
            event_type: event_type.to_owned(),
            bill_id: bill_id.0,
            channel,
            attempt,
            replay_count,
            occurred_at: Utc::now(),
            dead_letter,
        };
        Self::new(
            id,
            topic,
            bill_id.to_string(),
            event_type,
            serde_json::to_value(&event).unwrap_or(Value::Null),
            traceparent,
        )
    }

    /// Any payload: used for dead letters of records that name no valid bill.
    pub fn new(
        id: EventId,
        topic: &str,
        aggregate_id: String,
        event_type: &str,
        payload: Value,
        traceparent: Option<&str>,
    ) -> Self {
        let mut headers = json!({ "event_id": id.to_string(), "event_type": event_type });
        if let Some(tp) = traceparent {
            headers["traceparent"] = Value::String(tp.to_owned());
        }
        Self {
            id,
            topic: topic.to_owned(),
            aggregate_type: AGGREGATE_BILL,
            aggregate_id,
            event_type: event_type.to_owned(),
            payload,
            headers,
        }
    }
}

/// Inserts the rows with one statement (UNNEST) in the caller's transaction and notifies the
/// relays when it commits. Meant for batched writers: the notification costs one database-wide
/// lock at commit per transaction.
pub async fn insert(conn: &mut PgConnection, events: &[NewOutboxEvent]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut topics = Vec::with_capacity(events.len());
    let mut agg_types = Vec::with_capacity(events.len());
    let mut agg_ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut headers = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.id.0);
        topics.push(e.topic.as_str());
        agg_types.push(e.aggregate_type);
        agg_ids.push(e.aggregate_id.as_str());
        types.push(e.event_type.as_str());
        payloads.push(&e.payload);
        headers.push(&e.headers);
    }
    sqlx::query(
        "WITH inserted AS (
             INSERT INTO outbox (id, topic, aggregatetype, aggregateid, type, payload, headers)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]::json[], $7::text[]::json[])
             RETURNING 1)
         SELECT pg_notify('outbox_inserted', '') FROM (SELECT 1 FROM inserted LIMIT 1) t",
    )
    .bind(&ids)
    .bind(&topics)
    .bind(&agg_types)
    .bind(&agg_ids)
    .bind(&types)
    // As JSON text into `json` columns (migration 4): validated, stored as written.
    .bind(payloads.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    .bind(headers.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Wakes the relays after commits without a NOTIFY inside the writing transaction: each
/// [`RelayWaker::poke`] asks for one `pg_notify` on its own connection, and pokes that arrive
/// while one is in flight fold into a single next one. Cheap to clone; `poke` never blocks.
#[derive(Clone)]
pub struct RelayWaker {
    inner: Arc<WakerInner>,
}

struct WakerInner {
    pool: PgPool,
    tx: OnceLock<mpsc::Sender<()>>,
}

impl RelayWaker {
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(WakerInner {
                pool,
                tx: OnceLock::new(),
            }),
        }
    }

    /// Call after a commit that wrote outbox rows. Must run inside a Tokio runtime.
    pub fn poke(&self) {
        let tx = self.inner.tx.get_or_init(|| {
            // Capacity one: a full channel means a notification is already pending.
            let (tx, mut rx) = mpsc::channel::<()>(1);
            let pool = self.inner.pool.clone();
            tokio::spawn(async move {
                while rx.recv().await.is_some() {
                    if let Err(e) = sqlx::query("SELECT pg_notify('outbox_inserted', '')")
                        .execute(&pool)
                        .await
                    {
                        // The relay's polling fallback picks the rows up; nothing is lost.
                        tracing::debug!(error = %e, "failed to notify relays");
                    }
                    // At most one NOTIFY per interval: pokes meanwhile fold into the next one,
                    // so a busy API sends ~200 notifications/s, not one per commit.
                    tokio::time::sleep(WAKE_INTERVAL).await;
                }
            });
            tx
        });
        let _ = tx.try_send(());
    }
}
