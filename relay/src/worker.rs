//! The relay's loop: while it holds the lane, work through ticks chunk by chunk (see
//! [`crate::position`]): lock the lane, send the chunk's rows without awaiting each record,
//! await every delivery report, park what could not go out, record the new position, commit.
//! One transaction per chunk, so the position moves only once the broker has acknowledged.
//!
//! Pipelining: while a chunk awaits its delivery reports, the next chunks are already being
//! read (`read_ahead` of them, each on its own connection). Only reading runs ahead: a chunk
//! is sent after the one before it was settled, so a bill's events cannot overtake each other.
//! Within a chunk, a bill's second event goes out only after its first was acknowledged (a
//! second "wave"), and behind a parked one it is parked too.

use crate::backoff::Backoff;
use crate::parked::{self, Parking};
use crate::position::{self, Lane, OutboxRow};
use crate::publish::{self, ErrorClass, PublishError};
use crate::Shared;
use anyhow::Context;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// What one step (a chunk, or a pass over parked rows) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows of the chunk (or parked rows retried).
    pub claimed: usize,
    pub published: usize,
    /// Rows not delivered for a broker reason.
    pub retriable: usize,
    /// Rows refused for a reason of their own (unknown topic, too large).
    pub permanent: usize,
    /// Rows parked behind an earlier parked event of their bill.
    pub held: usize,
    /// Nothing was delivered and the position did not move: the worker backs off.
    pub stalled: bool,
    /// The producer reported a fatal error and was rebuilt.
    pub fatal: bool,
    /// Another relay holds the lane.
    pub standby: bool,
}

/// The tick being worked through, kept between chunks (each chunk is its own transaction).
struct Plan {
    done: String,
    tick: String,
    /// `tick_seq` as committed; `None` while the tick is not recorded yet.
    settled: Option<i64>,
    /// The `seq` of every row of the tick not settled yet, ascending.
    seqs: VecDeque<i64>,
    /// Chunks being read ahead, in order.
    ahead: VecDeque<ReadAhead>,
    /// Bills parked during this tick (rows read ahead do not know about them yet).
    parked_bills: HashSet<String>,
}

struct ReadAhead {
    first: i64,
    last: i64,
    rows: JoinHandle<sqlx::Result<Vec<OutboxRow>>>,
}

impl Plan {
    /// Whether the lane is where this plan left it (no other relay moved it meanwhile).
    fn matches(&self, lane: &Lane) -> bool {
        lane.done == self.done
            && lane.tick_seq == self.settled
            && match &lane.tick {
                Some(tick) => *tick == self.tick,
                None => self.settled.is_none(),
            }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        for ahead in &self.ahead {
            ahead.rows.abort();
        }
    }
}

/// Runs until `cancel` fires. A chunk in flight when it fires is finished (reports awaited,
/// position committed) before the loop returns.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut wake: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.options.max_backoff);
    let mut plan = None;
    let mut parked_check = Instant::now();
    async move {
        while !cancel.is_cancelled() {
            // Mark the wake-ups seen *before* reading: one arriving meanwhile makes
            // `changed()` below return at once, so no notification is lost.
            wake.borrow_and_update();
            let mut step = step(&shared, &mut plan).await;
            if matches!(&step, Ok(o) if !o.standby && !o.stalled) && Instant::now() >= parked_check
            {
                match retry_parked(&shared).await {
                    Ok((outcome, next)) => {
                        parked_check = Instant::now() + next;
                        if let Ok(o) = &mut step {
                            o.published += outcome.published;
                            o.stalled |= outcome.stalled;
                            o.fatal |= outcome.fatal;
                        }
                    }
                    Err(e) => step = Err(e),
                }
            }
            match step {
                Ok(outcome) if outcome.stalled || outcome.fatal => {
                    if !backoff.sleep(&cancel).await {
                        break;
                    }
                }
                Ok(outcome) if outcome.claimed == 0 && outcome.published == 0 => {
                    backoff.reset();
                    let idle = if outcome.standby {
                        shared.options.poll_interval
                    } else {
                        shared
                            .options
                            .poll_interval
                            .min(parked_check.saturating_duration_since(Instant::now()))
                    };
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        // A standby relay tries the lane again too: a notification is
                        // often the first sign that the active one has let go.
                        _ = wake.changed() => {}
                        () = tokio::time::sleep(idle) => {}
                    }
                }
                Ok(_) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "relay step failed; backing off");
                    crate::metrics::error("database", 1);
                    plan = None;
                    if !backoff.sleep(&cancel).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!("relay loop stopped");
    }
    .instrument(tracing::info_span!("relay"))
    .await
}

/// Publishes the next chunk of the tick in progress (starting a tick when none is).
async fn step(shared: &Shared, plan: &mut Option<Plan>) -> anyhow::Result<BatchOutcome> {
    let started = Instant::now();
    let mut tx = shared
        .pool
        .begin()
        .await
        .context("failed to begin the chunk transaction")?;
    let Some(lane) = position::lock(&mut tx)
        .await
        .context("failed to lock the relay's position")?
    else {
        tx.rollback().await.ok();
        *plan = None;
        return Ok(BatchOutcome {
            standby: true,
            ..Default::default()
        });
    };
    if plan.as_ref().is_some_and(|p| !p.matches(&lane)) {
        *plan = None;
    }
    let p = match plan {
        Some(p) => p,
        None => {
            let tick = lane.tick.clone().unwrap_or_else(|| lane.now.clone());
            let seqs = position::tick_seqs(
                &mut tx,
                &lane.done,
                &tick,
                lane.tick_seq.unwrap_or(i64::MIN),
            )
            .await
            .context("failed to list the rows of the tick")?;
            plan.insert(Plan {
                done: lane.done.clone(),
                tick,
                settled: lane.tick_seq,
                seqs: seqs.into(),
                ahead: VecDeque::new(),
                parked_bills: HashSet::new(),
            })
        }
    };
    if p.seqs.is_empty() {
        // Nothing (more) in this tick. A recorded tick is closed; a fresh empty one is not
        // worth a write.
        if p.settled.is_some() {
            position::advance(&mut tx, &p.tick, 0, true)
                .await
                .context("failed to close the tick")?;
            tx.commit().await.context("failed to commit the position")?;
        } else {
            tx.rollback().await.ok();
        }
        *plan = None;
        return Ok(BatchOutcome::default());
    }

    let n = p.seqs.len().min(shared.options.batch_size as usize);
    let (first, last) = (p.seqs[0], p.seqs[n - 1]);
    let ahead = match p.ahead.front() {
        Some(a) if a.first == first && a.last == last => p.ahead.pop_front(),
        _ => {
            p.ahead.clear();
            None
        }
    };
    let mut rows = match ahead {
        Some(a) => a
            .rows
            .await
            .context("a read-ahead task failed")?
            .context("failed to read a chunk ahead")?,
        None => position::fetch(&mut tx, &p.done, &p.tick, first, last)
            .await
            .context("failed to read the chunk")?,
    };
    read_ahead(shared, p, n);
    let read_at = Instant::now();
    let _in_flight = InFlight::hold(&shared.stats.in_flight);

    for row in &mut rows {
        row.blocked |= p.parked_bills.contains(&row.aggregateid);
    }
    let sent = send_in_waves(shared, &rows).await;
    let delivered_at = Instant::now();
    let mut outcome = sent.outcome;
    outcome.claimed = rows.len();

    if outcome.published == 0 && (outcome.retriable > 0 || outcome.fatal) && outcome.permanent == 0
    {
        // The broker took nothing (down, or the producer failed): leave the position where it
        // is and try the same chunk again after the back-off.
        tx.rollback().await.ok();
        outcome.stalled = true;
        report(shared, &outcome, &sent, started.elapsed(), &rows);
        rebuild_if_fatal(shared, &sent).await?;
        return Ok(outcome);
    }

    parked::park(
        &mut tx,
        &sent.parked,
        shared.options.max_backoff.min(Duration::from_secs(1)),
    )
    .await
    .context("failed to park rows")?;
    let finished = p.seqs.len() == n;
    position::advance(&mut tx, &p.tick, last, finished)
        .await
        .context("failed to record the position")?;
    if shared.options.async_commit {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .context("failed to set synchronous_commit")?;
    }
    let marked_at = Instant::now();
    tx.commit().await.context("failed to commit the position")?;
    tracing::debug!(
        outbox.rows = rows.len(),
        read_ms = (read_at - started).as_secs_f64() * 1e3,
        send_ms = (delivered_at - read_at).as_secs_f64() * 1e3,
        park_ms = (marked_at - delivered_at).as_secs_f64() * 1e3,
        commit_ms = marked_at.elapsed().as_secs_f64() * 1e3,
        "chunk committed"
    );

    p.parked_bills
        .extend(sent.parked.iter().map(|r| r.aggregateid.clone()));
    p.seqs.drain(..n);
    p.settled = Some(last);
    if finished {
        *plan = None;
    }
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    report(shared, &outcome, &sent, started.elapsed(), &rows);
    rebuild_if_fatal(shared, &sent).await?;
    Ok(outcome)
}

/// Starts reading the chunks after the first `n` seqs, up to `read_ahead` of them.
fn read_ahead(shared: &Shared, p: &mut Plan, n: usize) {
    let size = shared.options.batch_size as usize;
    let mut from = n + p.ahead.len() * size;
    while p.ahead.len() < shared.options.read_ahead && from < p.seqs.len() {
        let to = (from + size).min(p.seqs.len());
        let (first, last) = (p.seqs[from], p.seqs[to - 1]);
        let (pool, done, tick) = (shared.pool.clone(), p.done.clone(), p.tick.clone());
        let rows = tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            position::fetch(&mut conn, &done, &tick, first, last).await
        });
        p.ahead.push_back(ReadAhead { first, last, rows });
        from = to;
    }
}

/// What sending a chunk did, row by row.
struct Sent {
    outcome: BatchOutcome,
    published: Vec<Uuid>,
    parked: Vec<Parking>,
    first_error: Option<String>,
    fatal_error: Option<String>,
    producer: Arc<rdkafka::producer::FutureProducer>,
}

/// Sends the rows, a bill's first event in the first wave, its second in the second, and so
/// on; a row whose bill is blocked, or had a row fail in an earlier wave, is parked instead.
async fn send_in_waves(shared: &Shared, rows: &[OutboxRow]) -> Sent {
    let producer = shared.publisher.producer().await;
    let mut sent = Sent {
        outcome: BatchOutcome::default(),
        published: Vec::with_capacity(rows.len()),
        parked: Vec::new(),
        first_error: None,
        fatal_error: None,
        producer: producer.clone(),
    };
    let waves = waves(rows);
    // Bills whose row was parked: their later rows in the chunk are parked too.
    let mut held: HashSet<String> = HashSet::new();
    for wave in 0..waves.iter().copied().max().map_or(0, |w| w + 1) {
        let mut sending = Vec::new();
        for (row, _) in rows.iter().zip(&waves).filter(|(_, w)| **w == wave) {
            if row.blocked || held.contains(&row.aggregateid) {
                held.insert(row.aggregateid.clone());
                sent.outcome.held += 1;
                sent.parked.push(parking(row, None, false));
            } else {
                sending.push(row);
            }
        }
        let results = publish::send_all(&producer, &sending).await;
        for (row, result) in sending.into_iter().zip(results) {
            match result {
                Ok(()) => sent.published.push(row.id),
                Err(e) => {
                    record_error(&mut sent, &e);
                    held.insert(row.aggregateid.clone());
                    let permanent = e.class == ErrorClass::Permanent;
                    sent.parked.push(parking(row, Some(e.message), permanent));
                }
            }
        }
    }
    sent.fatal_error = publish::fatal_error(&producer);
    sent.outcome.fatal |= sent.fatal_error.is_some();
    sent.outcome.published = sent.published.len();
    sent
}

/// For each row, how many earlier rows of the chunk belong to its bill: its wave.
fn waves(rows: &[OutboxRow]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(rows.len());
    rows.iter()
        .map(|row| {
            let n = seen.entry(row.aggregateid.as_str()).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect()
}

fn record_error(sent: &mut Sent, e: &PublishError) {
    match e.class {
        ErrorClass::Permanent => sent.outcome.permanent += 1,
        ErrorClass::Retriable => sent.outcome.retriable += 1,
        ErrorClass::Fatal => {
            sent.outcome.retriable += 1;
            sent.outcome.fatal = true;
        }
    }
    sent.first_error.get_or_insert_with(|| e.message.clone());
}

fn parking(row: &OutboxRow, error: Option<String>, permanent: bool) -> Parking {
    Parking {
        seq: row.seq,
        id: row.id,
        aggregateid: row.aggregateid.clone(),
        error,
        permanent,
    }
}

/// Retries the parked rows that are due (first in line for their bill). Returns what it did
/// and when to look again.
async fn retry_parked(shared: &Shared) -> anyhow::Result<(BatchOutcome, Duration)> {
    let started = Instant::now();
    let mut tx = shared.pool.begin().await.context("failed to begin")?;
    if position::lock(&mut tx).await?.is_none() {
        tx.rollback().await.ok();
        return Ok((BatchOutcome::default(), shared.options.poll_interval));
    }
    let rows = parked::due(&mut tx, shared.options.batch_size)
        .await
        .context("failed to read parked rows")?;
    let mut outcome = BatchOutcome::default();
    let mut sent = None;
    if !rows.is_empty() {
        let s = send_in_waves(shared, &rows).await;
        outcome = s.outcome;
        outcome.claimed = rows.len();
        let seqs: Vec<i64> = rows
            .iter()
            .filter(|r| s.published.contains(&r.id))
            .map(|r| r.seq)
            .collect();
        parked::published(&mut tx, &seqs)
            .await
            .context("failed to mark parked rows published")?;
        let attempts = parked::failed_again(
            &mut tx,
            &s.parked,
            shared.options.row_retry_cap,
            shared.options.max_backoff,
        )
        .await
        .context("failed to record parked rows' failures")?;
        for (id, n) in attempts
            .iter()
            .filter(|(_, n)| *n >= shared.options.max_publish_attempts)
        {
            crate::metrics::error("max_attempts", 1);
            tracing::error!(outbox.id = %id, attempts = n, "outbox row keeps failing to publish");
        }
        sent = Some(s);
    }
    let next = parked::next_due(&mut tx)
        .await
        .context("failed to read when parked rows are due")?;
    tx.commit().await.context("failed to commit")?;
    if let Some(s) = &sent {
        outcome.stalled = outcome.published == 0 && outcome.retriable > 0;
        report(shared, &outcome, s, started.elapsed(), &rows);
        rebuild_if_fatal(shared, s).await?;
    }
    let next = match next {
        // Something was just published: its bill's next parked row may be due at once.
        Some(_) if outcome.published > 0 => Duration::ZERO,
        Some(secs) => Duration::from_secs_f64(secs.clamp(0.0, 3600.0)),
        None => shared.options.poll_interval,
    };
    Ok((outcome, next.min(shared.options.poll_interval)))
}

/// Counts, metrics, logs and the observer, after a chunk or a parked pass.
fn report(
    shared: &Shared,
    outcome: &BatchOutcome,
    sent: &Sent,
    took: Duration,
    rows: &[OutboxRow],
) {
    if !outcome.stalled {
        log_published(rows, &sent.published, took);
        let published: HashSet<_> = sent.published.iter().collect();
        crate::metrics::published(
            rows.iter()
                .filter(|r| published.contains(&r.id))
                .map(|r| (r.topic.as_str(), r.created_at)),
            took,
        );
        shared
            .stats
            .published
            .fetch_add(outcome.published as u64, Ordering::Relaxed);
        shared
            .stats
            .parked
            .fetch_add(sent.parked.len() as u64, Ordering::Relaxed);
        if let Some(observer) = &shared.observer {
            if !sent.published.is_empty() {
                observer(&sent.published);
            }
        }
    }
    let error = sent.first_error.as_deref().unwrap_or("");
    if outcome.retriable > 0 {
        crate::metrics::error("broker", outcome.retriable as u64);
        shared
            .stats
            .retriable_failures
            .fetch_add(outcome.retriable as u64, Ordering::Relaxed);
        if outcome.stalled {
            tracing::warn!(
                outbox.rows = outcome.retriable,
                error,
                "broker took nothing; retrying"
            );
        } else {
            tracing::warn!(
                outbox.rows = outcome.retriable,
                error,
                "records not delivered; rows parked and retried"
            );
        }
    }
    if outcome.permanent > 0 {
        crate::metrics::error("permanent", outcome.permanent as u64);
        shared
            .stats
            .permanent_failures
            .fetch_add(outcome.permanent as u64, Ordering::Relaxed);
        tracing::warn!(
            outbox.rows = outcome.permanent,
            error,
            "records rejected; rows parked with their error and retried later"
        );
    }
}

/// Rebuilds the producer after a fatal error (once, whoever saw it first).
async fn rebuild_if_fatal(shared: &Shared, sent: &Sent) -> anyhow::Result<()> {
    if !sent.outcome.fatal {
        return Ok(());
    }
    crate::metrics::error("fatal", 1);
    tracing::error!(
        error = sent.fatal_error.as_deref().unwrap_or("fatal"),
        "producer fatal error"
    );
    if shared.publisher.rebuild(&sent.producer).await? {
        shared
            .stats
            .producer_rebuilds
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Counts a chunk in flight until dropped, however the chunk ends.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn hold(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One info line per committed chunk; one debug line per published record with its `bill.id`
/// and `trace_id` (from the row's `traceparent` header). Per-record lines at info would be a
/// hundred thousand lines a second at full rate; `RUST_LOG=info,billing_relay=debug` turns
/// them on to follow a bill's trace through the relay.
fn log_published(rows: &[OutboxRow], published: &[Uuid], took: Duration) {
    if published.is_empty() {
        return;
    }
    tracing::info!(
        outbox.rows = rows.len(),
        outbox.published = published.len(),
        duration_ms = took.as_secs_f64() * 1e3,
        "chunk published"
    );
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let published: HashSet<_> = published.iter().collect();
    for row in rows.iter().filter(|r| published.contains(&r.id)) {
        let pairs = publish::header_pairs(&row.headers).unwrap_or_default();
        let header = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_ref())
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, bill: &str) -> OutboxRow {
        OutboxRow {
            id: Uuid::now_v7(),
            seq,
            aggregateid: bill.to_owned(),
            topic: "t".into(),
            payload: "{}".into(),
            headers: "{}".into(),
            created_at: chrono::Utc::now(),
            blocked: false,
        }
    }

    #[test]
    fn a_bills_later_events_in_a_chunk_go_in_later_waves() {
        let rows = [
            row(1, "a"),
            row(2, "b"),
            row(3, "a"),
            row(4, "c"),
            row(5, "a"),
            row(6, "b"),
        ];
        assert_eq!(waves(&rows), [0, 0, 1, 0, 2, 1]);
        assert!(waves(&[]).is_empty());
    }
}
