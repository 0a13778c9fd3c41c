//! billing-relay: publishes committed outbox rows to Kafka, in order per bill, with an
//! idempotent producer. [`run`] is what the binary does; [`Relay`] is the same thing on a pool
//! the caller owns (tests, benchmarks).
//!
//! - `position`: the outbox read as a log: the relay's position (Postgres snapshots, locked
//!   `FOR UPDATE SKIP LOCKED`), the rows of a tick, chunk by chunk
//! - `parked`: rows that could not go out with their chunk, and their retries
//! - `publish`: the producer, sending a chunk and classifying errors
//! - `worker`: the loop; `wake`: LISTEN/NOTIFY; `retention`: deleting old rows
//! - `metrics`, `settings`, `backoff`

pub mod backoff;
pub mod metrics;
pub mod parked;
pub mod position;
pub mod publish;
pub mod retention;
pub mod settings;
pub mod wake;
pub mod worker;

use anyhow::Context;
use publish::Publisher;
use shared::ops::ReadyCheck;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;
pub use worker::BatchOutcome;

/// Everything a relay needs besides its pool.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub brokers: String,
    /// Rows per chunk: read, sent and settled together.
    pub batch_size: i64,
    /// Chunks read ahead (each on its own connection) while one awaits its delivery reports.
    pub read_ahead: usize,
    pub poll_interval: Duration,
    pub retention_age: Duration,
    pub retention_batch: i64,
    pub retention_interval: Duration,
    pub max_publish_attempts: i32,
    pub message_timeout: Duration,
    pub max_backoff: Duration,
    pub row_retry_cap: Duration,
    /// Commit batches without waiting for the WAL flush (see `RELAY_ASYNC_COMMIT`).
    pub async_commit: bool,
}

impl RelayOptions {
    /// The binary's defaults, for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            batch_size: 5000,
            read_ahead: 2,
            poll_interval: Duration::from_millis(500),
            retention_age: Duration::from_secs(24 * 3600),
            retention_batch: 5000,
            retention_interval: Duration::from_secs(60),
            max_publish_attempts: 10,
            message_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            row_retry_cap: Duration::from_secs(300),
            async_commit: false,
        }
    }
}

/// Counters a caller can watch (tests wait on them; the metrics say the same to Prometheus).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub batches: AtomicU64,
    pub published: AtomicU64,
    pub retriable_failures: AtomicU64,
    pub permanent_failures: AtomicU64,
    /// Rows parked (failed, or held behind a parked event of their bill).
    pub parked: AtomicU64,
    /// Chunks read and not yet committed.
    pub in_flight: AtomicUsize,
    /// Producers rebuilt after a fatal error.
    pub producer_rebuilds: AtomicU64,
}

impl RelayStats {
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

pub(crate) struct Shared {
    pool: PgPool,
    options: RelayOptions,
    publisher: Arc<Publisher>,
    stats: Arc<RelayStats>,
    observer: Option<Observer>,
}

/// Called with the ids of the rows of each committed chunk that were published.
pub type Observer = Arc<dyn Fn(&[uuid::Uuid]) + Send + Sync>;

/// A relay on a pool: build it, then [`Relay::run`] it until a token is cancelled.
pub struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    /// Creates the producer. Does not touch the database or the broker yet.
    pub async fn new(pool: PgPool, options: RelayOptions) -> anyhow::Result<Self> {
        let config = publish::producer_config(&options.brokers, options.message_timeout);
        let publisher = Arc::new(Publisher::new(config).await?);
        let stats = Arc::new(RelayStats::default());
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                options,
                publisher,
                stats,
                observer: None,
            }),
        })
    }

    /// Calls `observer` after every commit with the ids published by it (benchmarks time
    /// commit-to-publish with it). Call before [`Relay::run`].
    pub fn on_published(mut self, observer: Observer) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.observer = Some(observer);
        }
        self
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.shared.stats.clone()
    }

    /// `/readyz`: the database answers and the producer is not in a fatal state.
    pub fn ready_check(&self) -> ReadyCheck {
        let pool = self.shared.pool.clone();
        let publisher = self.shared.publisher.clone();
        Arc::new(move || {
            let pool = pool.clone();
            let publisher = publisher.clone();
            Box::pin(async move {
                if !shared::db::ping(&pool).await {
                    return Err("database unavailable".to_owned());
                }
                publisher.health().await
            })
        })
    }

    /// Runs the loop, the listener, the backlog sampler and retention until `cancel` fires;
    /// then lets the chunk in flight finish, and flushes the producer.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let opts = &shared.options;
        let (wake_tx, _) = watch::channel(0u64);
        // Background tasks outlive the loop's last chunk, then stop.
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(wake::listen(
            shared.pool.clone(),
            wake_tx.clone(),
            background.clone(),
        ));
        // Counting the backlog reads every unpublished row: during a large drain a count
        // every 2 s cost Postgres ~15 % of a core, so every 10 s.
        tasks.spawn(metrics::sample_backlog(
            shared.pool.clone(),
            Duration::from_secs(10),
            background.clone(),
        ));
        tasks.spawn(retention::run(
            shared.pool.clone(),
            opts.retention_age,
            opts.retention_batch,
            opts.retention_interval,
            background.clone(),
        ));
        tracing::info!(
            batch_size = opts.batch_size,
            read_ahead = opts.read_ahead,
            "relay started"
        );
        let looped = tokio::spawn(worker::run(
            shared.clone(),
            wake_tx.subscribe(),
            cancel.clone(),
        ))
        .await;
        let panicked = looped.is_err();
        if let Err(e) = looped {
            tracing::error!(error = %e, "relay loop panicked");
        }
        background.cancel();
        while tasks.join_next().await.is_some() {}
        shared.publisher.flush(Duration::from_secs(5)).await;
        tracing::info!("relay stopped");
        anyhow::ensure!(!panicked, "the relay loop panicked");
        Ok(())
    }
}

/// The binary: connect (lazily, so a relay started before Postgres recovers when it comes),
/// optionally migrate, serve the ops endpoints, relay until `cancel` fires.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    shared::ops::metrics_handle();
    metrics::describe();
    tracing::info!(database = ?settings.database, kafka = ?settings.kafka, "starting relay");
    let pool = shared::db::connect_lazy(&settings.database)?;
    if settings.migrate {
        shared::db::migrate(&pool).await?;
    }
    let relay = Relay::new(pool, settings.options()).await?;
    let addr = shared::ops::serve(settings.admin_addr, relay.ready_check(), cancel.clone())
        .await
        .context("failed to start the ops server")?;
    tracing::info!(%addr, "ops endpoints listening");
    relay.run(cancel).await
}
