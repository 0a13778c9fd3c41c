//! Claiming bills: one statement claims a whole batch of records atomically. A bill is claimed
//! only while it is `PENDING` on the channel the record asks for; the claim records a fresh
//! claim token and a lease, and every later write about this attempt is fenced by that token.

use chrono::NaiveDate;
use serde::Deserialize;
use shared::domain::Channel;
use sqlx::{PgPool, Row};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// A record's request to deliver `bill_id` on `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub bill_id: Uuid,
    pub channel: Channel,
}

/// One bill item, in position order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Item {
    pub name: String,
    pub amount_minor: i64,
}

/// A bill this worker holds the lease of. Recipient fields are still ciphertext.
#[derive(Debug, Clone)]
pub struct ClaimedBill {
    pub id: Uuid,
    pub token: Uuid,
    pub channel: Channel,
    /// Send attempts including this one.
    pub attempts: i32,
    pub replay_count: i32,
    pub traceparent: Option<String>,
    /// The last error before this claim (the failed channel's error after a fallback).
    pub last_error: Option<String>,
    pub name_ct: String,
    pub email_ct: String,
    pub phone_ct: String,
    pub billing_period: String,
    pub due_date: NaiveDate,
    pub currency: String,
    pub total_minor: i64,
    pub items: Vec<Item>,
}

impl ClaimedBill {
    /// The provider idempotency key: stable across re-sends of this bill on this channel
    /// within one replay, so a provider that honours it never delivers twice.
    pub fn idempotency_key(&self) -> String {
        idempotency_key(self.id, self.channel, self.replay_count)
    }
}

/// `{bill_id}:{channel}:{replay_count}`.
pub fn idempotency_key(bill_id: Uuid, channel: Channel, replay_count: i32) -> String {
    format!("{bill_id}:{channel}:{replay_count}")
}

/// What happened to one claim request.
#[derive(Debug)]
pub enum ClaimResult {
    Claimed(Box<ClaimedBill>),
    /// The bill exists but is not `PENDING` on that channel (already claimed, sent, dead, moved
    /// on, or locked by another claimer right now): acknowledge the record and skip it.
    Skipped,
    /// No such bill: a poison record.
    UnknownBill,
}

/// Claims every request it can with one statement and loads the claimed bills with their items.
/// Results are in request order. Two requests for the same bill claim it at most once.
#[tracing::instrument(level = "debug", skip_all, fields(batch = requests.len()))]
pub async fn claim_batch(
    pool: &PgPool,
    requests: &[ClaimRequest],
    lease: Duration,
) -> sqlx::Result<Vec<ClaimResult>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = requests.iter().map(|r| r.bill_id).collect();
    let channels: Vec<&str> = requests.iter().map(|r| r.channel.as_str()).collect();
    let tokens: Vec<Uuid> = requests.iter().map(|_| Uuid::new_v4()).collect();
    // SKIP LOCKED: a row another claimer (or the sweeper, or an outcome write) holds right now
    // is not PENDING for us anyway, and skipping avoids lock waits and deadlocks between
    // consumers claiming overlapping batches.
    let rows = sqlx::query(
        "WITH r AS (
             SELECT DISTINCT ON (id, channel) *
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS r(id, channel, token)
             ORDER BY id, channel
         ), target AS (
             SELECT b.id, b.channel FROM bills b
             WHERE b.id = ANY($1) AND b.status = 'PENDING'
             FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE bills b
             SET status = 'SENDING', claim_token = r.token,
                 lease_until = now() + make_interval(secs => $4),
                 attempts = b.attempts + 1, updated_at = now()
             FROM target t JOIN r ON r.id = t.id AND r.channel = t.channel
             WHERE b.id = t.id
             RETURNING b.id, b.claim_token, b.channel, b.attempts, b.replay_count, b.traceparent,
                       b.last_error, b.recipient_name, b.recipient_email, b.recipient_phone,
                       b.billing_period, b.due_date, b.currency, b.total_minor
         )
         SELECT c.*, COALESCE((
             SELECT json_agg(json_build_object('name', i.name, 'amount_minor', i.amount_minor)
                             ORDER BY i.position)
             FROM bill_items i WHERE i.bill_id = c.id), '[]'::json) AS items
         FROM claimed c",
    )
    .bind(&ids)
    .bind(&channels)
    .bind(&tokens)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;

    let mut claimed: std::collections::HashMap<Uuid, ClaimedBill> =
        std::collections::HashMap::new();
    for row in rows {
        let channel: String = row.try_get("channel")?;
        let bill = ClaimedBill {
            id: row.try_get("id")?,
            token: row.try_get("claim_token")?,
            channel: channel
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            attempts: row.try_get("attempts")?,
            replay_count: row.try_get("replay_count")?,
            traceparent: row.try_get("traceparent")?,
            last_error: row.try_get("last_error")?,
            name_ct: row.try_get("recipient_name")?,
            email_ct: row.try_get("recipient_email")?,
            phone_ct: row.try_get("recipient_phone")?,
            billing_period: row.try_get("billing_period")?,
            due_date: row.try_get("due_date")?,
            currency: row.try_get("currency")?,
            total_minor: row.try_get("total_minor")?,
            items: row.try_get::<sqlx::types::Json<Vec<Item>>, _>("items")?.0,
        };
        claimed.insert(bill.id, bill);
    }

    // Existence matters only for requests that did not win a claim (rare on the hot path).
    let unclaimed: Vec<Uuid> = ids
        .iter()
        .filter(|id| !claimed.contains_key(id))
        .copied()
        .collect();
    let existing: HashSet<Uuid> = if unclaimed.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM bills WHERE id = ANY($1)")
            .bind(&unclaimed)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    };

    Ok(requests
        .iter()
        .zip(&tokens)
        .map(|(req, token)| match claimed.get(&req.bill_id) {
            // only the request whose token won gets the bill; a duplicate request is skipped
            Some(bill) if bill.token == *token => ClaimResult::Claimed(Box::new(bill.clone())),
            Some(_) => ClaimResult::Skipped,
            None if existing.contains(&req.bill_id) => ClaimResult::Skipped,
            None => ClaimResult::UnknownBill,
        })
        .collect())
}
