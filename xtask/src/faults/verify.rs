//! What must hold after a fault scenario, checked against the database and provider-sim's own
//! record of what it delivered (`GET /v1/deliveries`, `GET /stats`):
//!
//! - lost: accepted bills that are not SENT or DEAD when the scenario's deadline passed;
//! - double deliveries: bills the provider delivered under more than one key (email and SMS,
//!   or two replays); the same key twice cannot be delivered, the provider refuses it;
//! - every SENT bill delivered exactly under its key `{id}:{channel}:{replay_count}`, no DEAD
//!   bill delivered, unique deliveries equal to SENT bills;
//! - re-sends: the sends the provider refused as duplicates. Each is a send that reached the
//!   provider but whose outcome was not recorded: either the worker was killed or stalled, its
//!   lease expired and the bill was sent again by a new claim (every expiry leaves an `EXPIRED`
//!   attempt), or the worker's request timed out and it retried (logged by the consumer, counted
//!   by the caller). Re-sends above expiries + retries are unexplained (and fail), as are
//!   re-sends at or above the caller's budget: 1% of the bills at full size; a small batch gets
//!   the bound of the in-flight window instead (see `resend_budget` in the parent module);
//! - per-bill history: a SENT bill has exactly one SENT attempt, on its channel and replay; a
//!   DEAD bill has none; every attempt carries its bill's key; terminal bills hold no lease.

use crate::demo::summary::fetch_provider;
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: i64,
    pub terminal: i64,
    pub lost: i64,
    pub sent: i64,
    pub dead: i64,
    pub double: i64,
    pub resends: i64,
    pub expired_attempts: i64,
    /// Provider retries within one claim (transient errors, timeouts), from the consumer logs.
    pub retries: i64,
    pub deliveries: i64,
    /// Everything that contradicts a guarantee, one line each (capped samples).
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self, expected: usize, budget: i64) -> bool {
        self.problems.is_empty()
            && self.accepted == expected as i64
            && self.lost == 0
            && self.double == 0
            && self.resends <= self.expired_attempts + self.retries
            && self.resends < budget
    }
}

#[derive(Deserialize)]
struct Delivery {
    key: String,
}

#[derive(sqlx::FromRow)]
struct BillRow {
    id: Uuid,
    status: String,
    channel: String,
    replay_count: i32,
    leased: bool,
    stamped: bool,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    bill_id: Uuid,
    channel: String,
    replay_count: i32,
    outcome: String,
    idempotency_key: String,
}

/// Collects `problem` samples: the first few in full, then only a count.
struct Problems {
    lines: Vec<String>,
    counts: HashMap<&'static str, usize>,
}

impl Problems {
    fn add(&mut self, kind: &'static str, detail: String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= 3 {
            self.lines.push(format!("{kind}: {detail}"));
        }
    }

    fn finish(mut self) -> Vec<String> {
        let mut kinds: Vec<_> = self.counts.into_iter().filter(|(_, n)| *n > 3).collect();
        kinds.sort();
        for (kind, n) in kinds {
            self.lines.push(format!("{kind}: {n} in all"));
        }
        self.lines
    }
}

pub async fn verify(
    pool: &PgPool,
    http: &reqwest::Client,
    sim: &str,
    expected: usize,
    retries: i64,
    budget: i64,
) -> anyhow::Result<Verdict> {
    let mut p = Problems {
        lines: Vec::new(),
        counts: HashMap::new(),
    };
    let bills: Vec<BillRow> = sqlx::query_as(
        "SELECT id, status, channel, replay_count, claim_token IS NOT NULL AS leased,
                CASE status WHEN 'SENT' THEN sent_at IS NOT NULL
                            WHEN 'DEAD' THEN dead_at IS NOT NULL ELSE true END AS stamped
         FROM bills",
    )
    .fetch_all(pool)
    .await?;
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT bill_id, channel, replay_count, outcome, idempotency_key FROM delivery_attempts",
    )
    .fetch_all(pool)
    .await?;
    let deliveries: Vec<Delivery> = http
        .get(format!("{sim}/v1/deliveries"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let provider = fetch_provider(http, sim).await?;

    let mut v = Verdict {
        accepted: bills.len() as i64,
        resends: provider.duplicates,
        retries,
        deliveries: deliveries.len() as i64,
        ..Verdict::default()
    };
    if v.accepted != expected as i64 {
        p.add(
            "accepted",
            format!("{} bills in the database, {expected} enqueued", v.accepted),
        );
    }

    let mut delivered: HashMap<&str, Vec<&str>> = HashMap::new();
    for d in &deliveries {
        let bill = d.key.split(':').next().unwrap_or_default();
        delivered.entry(bill).or_default().push(d.key.as_str());
    }
    v.double = delivered.values().filter(|keys| keys.len() > 1).count() as i64;
    for (bill, keys) in delivered.iter().filter(|(_, k)| k.len() > 1) {
        p.add(
            "double delivery",
            format!("bill {bill} delivered under {keys:?}"),
        );
    }

    let mut history: HashMap<Uuid, Vec<&AttemptRow>> = HashMap::new();
    for a in &attempts {
        if a.outcome == "EXPIRED" {
            v.expired_attempts += 1;
        }
        history.entry(a.bill_id).or_default().push(a);
    }
    for b in &bills {
        let id = b.id.to_string();
        let key = format!("{id}:{}:{}", b.channel, b.replay_count);
        let got = delivered.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let rows = history.get(&b.id).map(Vec::as_slice).unwrap_or(&[]);
        let sent_rows: Vec<&&AttemptRow> = rows
            .iter()
            .filter(|a| a.outcome == "SENT" && a.replay_count == b.replay_count)
            .collect();
        for a in rows {
            let own = format!("{id}:{}:{}", a.channel, a.replay_count);
            if a.idempotency_key != own {
                p.add(
                    "attempt key",
                    format!("bill {id}: attempt carries {}", a.idempotency_key),
                );
            }
        }
        match b.status.as_str() {
            "SENT" => {
                v.sent += 1;
                if !got.contains(&key.as_str()) {
                    p.add(
                        "SENT but not delivered",
                        format!("bill {id} ({key}); provider has {got:?}"),
                    );
                }
                if sent_rows.len() != 1 || sent_rows[0].channel != b.channel {
                    p.add(
                        "SENT history",
                        format!(
                            "bill {id} on {}: {} SENT attempts",
                            b.channel,
                            sent_rows.len()
                        ),
                    );
                }
            }
            "DEAD" => {
                v.dead += 1;
                if !got.is_empty() {
                    p.add(
                        "DEAD but delivered",
                        format!("bill {id} delivered under {got:?}"),
                    );
                }
                if !sent_rows.is_empty() || rows.is_empty() {
                    p.add(
                        "DEAD history",
                        format!(
                            "bill {id}: {} attempts, {} SENT",
                            rows.len(),
                            sent_rows.len()
                        ),
                    );
                }
            }
            _ => {}
        }
        if matches!(b.status.as_str(), "SENT" | "DEAD") && (b.leased || !b.stamped) {
            p.add(
                "terminal state",
                format!(
                    "bill {id} {}: lease held {}, timestamp set {}",
                    b.status, b.leased, b.stamped
                ),
            );
        }
    }
    v.terminal = v.sent + v.dead;
    v.lost = v.accepted - v.terminal;
    if v.deliveries != v.sent {
        p.add(
            "deliveries",
            format!(
                "provider delivered {} messages, {} bills are SENT",
                v.deliveries, v.sent
            ),
        );
    }
    if v.lost > 0 {
        p.add(
            "lost",
            format!("{} accepted bills not SENT or DEAD at the deadline", v.lost),
        );
    }
    if v.resends > v.expired_attempts + v.retries {
        p.add(
            "unexplained re-sends",
            format!(
                "{} duplicates refused by the provider, only {} expired leases and {} retries",
                v.resends, v.expired_attempts, v.retries
            ),
        );
    }
    if v.resends >= budget {
        p.add(
            "re-sends",
            format!(
                "{} re-sends of {expected} bills, at or above the budget of {budget}",
                v.resends
            ),
        );
    }
    v.problems = p.finish();
    Ok(v)
}
