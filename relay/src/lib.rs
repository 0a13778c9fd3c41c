//! billing-relay: publishes committed outbox rows to Kafka, in order per bill, with an
//! idempotent producer. [`run`] is what the binary does; [`Relay`] is the same thing on a pool
//! the caller owns (tests, benchmarks).
//!
//! - `claim`: the SQL (claim with `FOR UPDATE SKIP LOCKED`, mark published, record failures)
//! - `publish`: the producer, sending a batch and classifying errors
//! - `low_water`: where claims start scanning
//! - `worker`: one claim loop; `wake`: LISTEN/NOTIFY; `retention`: deleting old rows
//! - `metrics`, `settings`, `backoff`

pub mod backoff;
pub mod claim;
pub mod low_water;
pub mod metrics;
pub mod publish;
pub mod retention;
pub mod settings;
pub mod wake;
pub mod worker;

use anyhow::Context;
use publish::Publisher;
use shared::ops::ReadyCheck;
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
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
    pub batch_size: i64,
    pub workers: usize,
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
            batch_size: 1000,
            workers: 3,
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
    /// Batches claimed and not yet committed.
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
    /// The claims' lower bound on `seq`, kept by [`low_water::run`].
    low_water: Arc<AtomicI64>,
    /// The `seq` ranges of this relay's batches in flight (see [`claim::InFlightRanges`]).
    in_flight_ranges: claim::InFlightRanges,
}

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
        let low_water = Arc::new(AtomicI64::new(0));
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                options,
                publisher,
                stats,
                low_water,
                in_flight_ranges: claim::InFlightRanges::default(),
            }),
        })
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.shared.stats.clone()
    }

    /// Where claims start scanning (see [`low_water`]); tests watch it.
    pub fn low_water(&self) -> Arc<AtomicI64> {
        self.shared.low_water.clone()
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

    /// Claims and publishes one batch outside the loops (tests, benchmarks).
    pub async fn process_batch(&self) -> anyhow::Result<BatchOutcome> {
        worker::process_batch(&self.shared).await
    }

    /// Runs the claim loops, the listener, the backlog sampler and retention until `cancel`
    /// fires; then lets every batch in flight finish, and flushes the producer.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let opts = &shared.options;
        let (wake_tx, _) = watch::channel(0u64);
        // Background tasks outlive the workers' last batch, then stop.
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(wake::listen(
            shared.pool.clone(),
            wake_tx.clone(),
            background.clone(),
        ));
        if let Err(e) = low_water::refresh_full(&shared.pool, &shared.low_water).await {
            // Claims then start from the first row until the next refresh: slower, not wrong.
            tracing::warn!(error = %e, "could not compute where claims start");
        }
        tasks.spawn(low_water::run(
            shared.pool.clone(),
            shared.low_water.clone(),
            background.clone(),
        ));
        tasks.spawn(metrics::sample_backlog(
            shared.pool.clone(),
            Duration::from_secs(2),
            background.clone(),
        ));
        tasks.spawn(retention::run(
            shared.pool.clone(),
            opts.retention_age,
            opts.retention_batch,
            opts.retention_interval,
            background.clone(),
        ));
        let mut workers = JoinSet::new();
        for n in 0..opts.workers {
            workers.spawn(worker::run(
                shared.clone(),
                n,
                wake_tx.subscribe(),
                cancel.clone(),
            ));
        }
        tracing::info!(
            workers = opts.workers,
            batch_size = opts.batch_size,
            "relay started"
        );
        let mut panicked = false;
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "relay worker panicked");
                panicked = true;
                cancel.cancel();
            }
        }
        background.cancel();
        while tasks.join_next().await.is_some() {}
        shared.publisher.flush(Duration::from_secs(5)).await;
        tracing::info!("relay stopped");
        anyhow::ensure!(!panicked, "a relay worker panicked");
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
