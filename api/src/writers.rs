//! The connections of the single-bill write path.
//!
//! `POST /v1/bills` is one statement ([`crate::write::INSERT_ONE_SQL`]). Through sqlx's pool
//! each request would also pay for the pool: a spawned task and a round trip to Postgres (a
//! Sync "ping") every time a connection goes back to it, which sqlx 0.8 always sends. Profiled,
//! the pool was a third of the API's CPU per bill and doubled the wake-ups of Postgres backends.
//!
//! So single bills go through writers instead: `count` tasks, each holding one connection of
//! a pool of their own for as long as work keeps coming, take bills from one queue and run the
//! statement back to back, the way pgbench's clients do. Reads, batches and admin requests keep
//! using the main pool, so the API opens up to `DB_MAX_CONNECTIONS + API_WRITERS` connections.
//!
//! Group commit: a writer that finds more bills waiting in the queue when it takes one (up to
//! `group`, `API_WRITE_GROUP`) writes them together with the batch statement
//! ([`crate::write::insert_rows`]): one statement, one commit and one WAL flush for all of them,
//! where Postgres would otherwise commit them one at a time. It never waits for bills to
//! arrive, so an idle API writes each bill at once; under load, requests that would have queued
//! for a connection share a commit instead. Each request still gets its own answer: a bill
//! whose key already existed is resolved alone ([`crate::write::insert_one`]), and when the
//! grouped statement fails with a database error (atomic: nothing was written) every bill of
//! the group is written alone, so one bad bill fails only its own request.
//!
//! Failure behaviour is the pool's: a writer whose statement fails (the connection broke,
//! Postgres restarted) drops its connection and opens a fresh one for the next bill; when none can be had within the acquire timeout the request is
//! answered 503. A request abandoned while queued (client gone, request timeout) is skipped.
//! A writer that has been idle for [`IDLE`] gives its connection back.

use crate::error::is_unavailable;
use crate::write::{self, PreparedBill, Written};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// How long a writer keeps an unused connection.
pub const IDLE: Duration = Duration::from_secs(30);

/// Cheap to clone. The tasks start on the first bill (inside a Tokio runtime) and stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Writers {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    count: usize,
    group: usize,
    queue: OnceLock<mpsc::Sender<Job>>,
}

struct Job {
    bill: PreparedBill,
    reply: oneshot::Sender<Result<Written, sqlx::Error>>,
}

impl Writers {
    /// `count` writers with a lazy pool of as many connections, made with `main`'s connect
    /// options and acquire timeout, each writing up to `group` waiting bills with one statement.
    pub fn new(main: &PgPool, count: usize, group: usize) -> Self {
        let count = count.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(count as u32)
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(main.options().get_acquire_timeout())
            .connect_lazy_with((*main.connect_options()).clone());
        Self {
            inner: Arc::new(Inner {
                pool,
                count,
                group: group.max(1),
                queue: OnceLock::new(),
            }),
        }
    }

    /// Writes one bill ([`write::insert_one`]) on a writer's connection.
    pub async fn insert(&self, bill: PreparedBill) -> Result<Written, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue()
            .send(Job { bill, reply })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    fn queue(&self) -> &mpsc::Sender<Job> {
        self.inner.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.inner.count * 64);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..self.inner.count {
                tokio::spawn(run(self.inner.pool.clone(), rx.clone(), self.inner.group));
            }
            tx
        })
    }
}

/// One writer: takes the next bill and whatever else is waiting (up to `group`), writes them
/// on its connection, answers each.
async fn run(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>, group: usize) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    let mut jobs: Vec<Job> = Vec::with_capacity(group);
    loop {
        let next = {
            let mut queue = queue.lock().await;
            let first = if conn.is_some() {
                tokio::time::timeout(IDLE, queue.recv()).await
            } else {
                Ok(queue.recv().await)
            };
            if let Ok(Some(job)) = first {
                jobs.push(job);
                while jobs.len() < group {
                    match queue.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                Ok(true)
            } else {
                first.map(|job| job.is_some())
            }
        };
        match next {
            Ok(true) => {}
            Ok(false) => return,
            Err(_idle) => {
                conn = None;
                continue;
            }
        }
        // Requests abandoned while queued (client gone, timeout) are not written.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let held = match conn.as_mut() {
            Some(held) => held,
            None => match pool.acquire().await {
                Ok(fresh) => conn.insert(fresh),
                Err(e) => {
                    answer_all(jobs.drain(..), &e);
                    continue;
                }
            },
        };
        if !write_jobs(held, &mut jobs).await {
            // The statement resolves conflicts itself, so an error means trouble with the
            // server or the connection; it may be broken or mid-protocol even when the error
            // is a database error (a terminated backend sends FATAL 57P01 before closing).
            // Give it back for the pool to check and start the next bills on a fresh one.
            conn = None;
        }
    }
}

/// Writes `jobs` (drained) and answers them. Returns false when a statement failed.
async fn write_jobs(conn: &mut PgConnection, jobs: &mut Vec<Job>) -> bool {
    metrics::histogram!(crate::http_metrics::WRITE_GROUP_SIZE).record(jobs.len() as f64);
    let groupable = jobs.len() > 1
        && jobs.iter().all(|j| {
            j.bill.outbox.topic == jobs[0].bill.outbox.topic
                && j.bill.outbox.event_type == jobs[0].bill.outbox.event_type
        });
    if groupable {
        let bills: Vec<&PreparedBill> = jobs.iter().map(|j| &j.bill).collect();
        match write::insert_rows(conn, &bills).await {
            Ok(inserted) => {
                let inserted: HashSet<uuid::Uuid> = inserted.into_iter().collect();
                let mut ok = true;
                for job in jobs.drain(..) {
                    if inserted.contains(&job.bill.id.0) {
                        let _ = job.reply.send(Ok(Written::Inserted(job.bill.id)));
                    } else {
                        // Its key existed (or repeated another of the group): resolve it alone.
                        ok &= write_one(conn, job).await;
                    }
                }
                return ok;
            }
            Err(e @ sqlx::Error::Database(_)) if !is_unavailable(&e) => {
                // Atomic, so nothing was written: write each alone, so that only the bill at
                // fault fails.
                tracing::warn!(error = %e, bills = jobs.len(), "grouped insert failed; writing the bills one by one");
            }
            Err(e) => {
                answer_all(jobs.drain(..), &e);
                return false;
            }
        }
    }
    let mut ok = true;
    for job in jobs.drain(..) {
        ok &= write_one(conn, job).await;
    }
    ok
}

/// Writes one bill alone and answers it. Returns false when its statement failed.
async fn write_one(conn: &mut PgConnection, job: Job) -> bool {
    let result = write::insert_one(conn, &job.bill).await;
    let ok = result.is_ok();
    let _ = job.reply.send(result);
    ok
}

/// Answers every job with (a copy of) `error` (`sqlx::Error` is not `Clone`). The copy keeps
/// the class the API maps to a status: connection trouble (503) stays I/O, anything else is
/// passed on as a protocol error.
fn answer_all(jobs: impl Iterator<Item = Job>, error: &sqlx::Error) {
    let unavailable = is_unavailable(error);
    for job in jobs {
        let copy = if unavailable {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                error.to_string(),
            ))
        } else {
            sqlx::Error::Protocol(error.to_string())
        };
        let _ = job.reply.send(Err(copy));
    }
}
