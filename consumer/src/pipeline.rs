//! The two batching stages between intake and Kafka offsets:
//!
//! - the claimer takes every record waiting (up to [`BATCH`]) and claims them with one
//!   statement, then runs each claimed bill as its own task ([`crate::process`]);
//! - the writer takes every finished record waiting and records them in one transaction
//!   ([`crate::outcome::write_batch`]); only after that commit are their offsets marked done.
//!
//! Batches form by themselves: while one statement runs, the next batch queues up. Each record
//! holds a semaphore permit from intake until its offset is marked done, which bounds the
//! records (and memory) in flight.

use crate::claim::{claim_batch, ClaimRequest, ClaimResult};
use crate::offsets::{Generation, OffsetTracker};
use crate::outcome::{reason, write_batch, Finished, Outcome, Written};
use crate::process::Sender;
use shared::config::Topics;
use shared::events::SourceRecord;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Largest batch of one claim statement or one outcome transaction.
pub const BATCH: usize = 500;

/// Where a record came from, and the permit that keeps it counted as in flight.
#[derive(Debug)]
pub struct Ticket {
    pub source: SourceRecord,
    pub generation: Generation,
    pub permit: OwnedSemaphorePermit,
}

/// A record to claim.
#[derive(Debug)]
pub struct ToClaim {
    pub ticket: Ticket,
    pub request: ClaimRequest,
}

/// A record whose outcome is ready to be written.
#[derive(Debug)]
pub struct Done {
    pub ticket: Ticket,
    pub outcome: Outcome,
}

/// The leases this process holds (bill id -> claim token), so a shutdown that runs out of
/// grace can hand them back instead of leaving them to expire.
pub type Held = Arc<Mutex<HashMap<Uuid, Uuid>>>;

/// The in-flight semaphore and its size (for the in-flight gauge).
#[derive(Debug, Clone)]
pub struct Capacity {
    pub permits: Arc<Semaphore>,
    pub max: usize,
}

/// Stores offsets for the next commit (the Kafka consumer in production).
pub trait OffsetStore: Send + Sync {
    fn store(&self, points: &[(String, i32, i64)]);
}

/// Claims batches and spawns a task per claimed bill until the input closes and every task
/// has finished. Dropping this future aborts the bill tasks (a crash, as far as they know).
pub async fn claimer(
    pool: PgPool,
    lease: Duration,
    sender: Arc<Sender>,
    held: Held,
    mut rx: mpsc::Receiver<ToClaim>,
    done: mpsc::Sender<Done>,
) {
    let mut tasks = JoinSet::new();
    let mut buf = Vec::with_capacity(BATCH);
    let mut open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, BATCH), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let batch: Vec<ToClaim> = std::mem::take(&mut buf);
                let requests: Vec<ClaimRequest> = batch.iter().map(|w| w.request).collect();
                let results = claim_with_retry(&pool, &requests, lease).await;
                for (work, result) in batch.into_iter().zip(results) {
                    let ticket = work.ticket;
                    match result {
                        ClaimResult::Claimed(bill) => {
                            held.lock().unwrap_or_else(|p| p.into_inner()).insert(bill.id, bill.token);
                            let sender = sender.clone();
                            let done = done.clone();
                            tasks.spawn(async move {
                                let outcome = sender.process(&bill).await;
                                let _ = done.send(Done { ticket, outcome }).await;
                            });
                        }
                        ClaimResult::Skipped => {
                            let _ = done.send(Done { ticket, outcome: Outcome::Skipped }).await;
                        }
                        ClaimResult::UnknownBill => {
                            let outcome = Outcome::Poison {
                                bill_id: Some(work.request.bill_id),
                                channel: work.request.channel,
                                reason: reason::UNKNOWN_BILL,
                                error: "the record names a bill that does not exist".into(),
                            };
                            let _ = done.send(Done { ticket, outcome }).await;
                        }
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        // The bill stays SENDING; the sweeper hands it back when the lease expires.
                        tracing::error!("a bill task panicked; its lease will expire");
                    }
                }
            }
            else => return,
        }
    }
}

/// Claims, retrying database errors with backoff: records stay queued (and their offsets
/// unstored) until Postgres answers.
async fn claim_with_retry(
    pool: &PgPool,
    requests: &[ClaimRequest],
    lease: Duration,
) -> Vec<ClaimResult> {
    let mut delay = Duration::from_millis(100);
    loop {
        match claim_batch(pool, requests, lease).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(error = %e, batch = requests.len(), "claim failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes outcomes in batches until the input closes, then marks their offsets done.
pub async fn writer(
    pool: PgPool,
    topics: Topics,
    mut rx: mpsc::Receiver<Done>,
    tracker: Arc<Mutex<OffsetTracker>>,
    store: Arc<dyn OffsetStore>,
    held: Held,
    capacity: Capacity,
) {
    let mut buf: Vec<Done> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        let batch: Vec<Finished> = buf
            .iter()
            .map(|d| Finished {
                source: d.ticket.source.clone(),
                outcome: d.outcome.clone(),
            })
            .collect();
        let written = write_with_retry(&pool, &topics, &batch).await;
        {
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            for (f, w) in batch.iter().zip(&written) {
                count(f, *w);
                log_outcome(f, *w);
                if let Outcome::Sent { attempt }
                | Outcome::Failed { attempt, .. }
                | Outcome::Undecryptable { attempt, .. } = &f.outcome
                {
                    if h.get(&attempt.bill_id) == Some(&attempt.token) {
                        h.remove(&attempt.bill_id);
                    }
                }
            }
        }
        // Durable: now, and only now, the offsets may move past these records. One point per
        // partition (the latest): a partition listed twice would store an invalid offset.
        let points: Vec<(String, i32, i64)> = {
            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            let mut latest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            for d in &buf {
                let s = &d.ticket.source;
                if let Some(o) = t.finish(&s.topic, s.partition, s.offset, d.ticket.generation) {
                    let e = latest.entry((s.topic.as_str(), s.partition)).or_insert(o);
                    *e = (*e).max(o);
                }
            }
            latest
                .into_iter()
                .map(|((topic, p), o)| (topic.to_owned(), p, o))
                .collect()
        };
        if !points.is_empty() {
            store.store(&points);
        }
        buf.clear(); // releases the permits: intake may take more records
        let in_flight = capacity
            .max
            .saturating_sub(capacity.permits.available_permits());
        metrics::gauge!(crate::metrics::IN_FLIGHT).set(in_flight as f64);
    }
}

async fn write_with_retry(pool: &PgPool, topics: &Topics, batch: &[Finished]) -> Vec<Written> {
    let mut delay = Duration::from_millis(100);
    loop {
        match write_batch(pool, topics, batch).await {
            Ok(w) => return w,
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), "writing outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn count(f: &Finished, w: Written) {
    use crate::metrics as m;
    match w {
        Written::Sent => metrics::counter!(m::SENT).increment(1),
        Written::FellBack => metrics::counter!(m::FALLBACKS).increment(1),
        Written::Dead => {
            let why = match &f.outcome {
                Outcome::Undecryptable { .. } => reason::UNDECRYPTABLE,
                _ => reason::CHANNELS_EXHAUSTED,
            };
            metrics::counter!(m::DLT, "reason" => why).increment(1);
        }
        Written::Poisoned => {
            let why = match &f.outcome {
                Outcome::Poison { reason, .. } => *reason,
                _ => reason::POISON_RECORD,
            };
            metrics::counter!(m::DLT, "reason" => why).increment(1);
        }
        Written::Skipped => metrics::counter!(m::CLAIMS_SKIPPED).increment(1),
        Written::Fenced => metrics::counter!(m::FENCED).increment(1),
    }
}

/// One line per bill outcome, after it is durable, carrying `bill.id` and the `trace_id` of
/// the bill's `traceparent`, so one bill can be followed from the API call through the relay to
/// here. The trace context comes from the bill row (the same value the API wrote into the
/// outbox headers, and so into the record's `traceparent` header); the fallback, dead-letter
/// and sweeper outbox rows carry it on.
fn log_outcome(f: &Finished, w: Written) {
    let (attempt, error) = match &f.outcome {
        Outcome::Sent { attempt } => (attempt, None),
        Outcome::Failed { attempt, error } | Outcome::Undecryptable { attempt, error } => {
            (attempt, Some(error.as_str()))
        }
        Outcome::Poison {
            bill_id,
            reason,
            error,
            ..
        } => {
            tracing::warn!(
                bill.id = %bill_id.map(|b| b.to_string()).unwrap_or_default(),
                kafka.topic = %f.source.topic,
                kafka.partition = f.source.partition,
                kafka.offset = f.source.offset,
                reason = *reason,
                error = %error,
                "poison record sent to the dead-letter topic"
            );
            return;
        }
        Outcome::Skipped => {
            tracing::debug!(
                kafka.partition = f.source.partition,
                kafka.offset = f.source.offset,
                "record skipped: the bill is not pending on its channel"
            );
            return;
        }
    };
    let trace_id = attempt
        .traceparent
        .as_deref()
        .and_then(shared::telemetry::trace_id)
        .unwrap_or("");
    let error = error.unwrap_or("");
    macro_rules! bill_line {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                bill.id = %attempt.bill_id,
                trace_id,
                channel = %attempt.channel,
                attempts = attempt.attempts,
                replay_count = attempt.replay_count,
                error,
                $message
            )
        };
    }
    match w {
        Written::Sent => bill_line!(info, "bill sent"),
        Written::FellBack => bill_line!(info, "bill fell back to the next channel"),
        Written::Dead => bill_line!(info, "bill dead"),
        Written::Fenced => bill_line!(info, "lease was reclaimed; outcome discarded"),
        Written::Poisoned | Written::Skipped => {}
    }
}
