//! billing-consumer: reads bill requests from `bills.email` / `bills.sms`, claims each bill
//! atomically, decrypts and renders it, sends it through a provider, and records the outcome
//! fenced by the claim token. Email failures fall back to SMS, SMS failures end in DEAD with a
//! dead-letter row; both announcements go through the outbox (this service never produces to
//! Kafka). A sweeper hands back bills whose lease expired.
//!
//! Pipeline: intake -> claimer (batched claims) -> one task per bill -> writer (batched
//! outcome transactions) -> offsets stored up to the lowest unfinished record.

pub mod claim;
pub mod intake;
pub mod metrics;
pub mod offsets;
pub mod outcome;
pub mod pipeline;
pub mod process;
pub mod render;
pub mod send;
pub mod settings;
pub mod sweeper;

use anyhow::Context;
use offsets::OffsetTracker;
use process::Sender;
use send::http::HttpProvider;
use send::rate_limit::SendLimits;
use send::simulated::SimulatedProvider;
use send::Provider;
pub use settings::{Cli, Command, Settings};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connects to Postgres (migrating first with `--migrate`) and runs until `cancel` fires.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    settings.validate()?;
    // Configuration errors first, before waiting on Postgres.
    settings.keyring.keyring()?;
    let pool = shared::db::connect(&settings.database).await?;
    if settings.migrate {
        shared::db::migrate(&pool).await?;
    }
    run_with_pool(settings, pool, cancel, None).await
}

/// Runs the consumer on `pool` until `cancel` fires, then shuts down gracefully: stop reading,
/// let in-flight bills finish for up to `SHUTDOWN_GRACE_SECS` (the rest keep their lease and
/// the sweeper hands them back), write their outcomes, store and commit offsets.
///
/// `admin_bound` receives the bound admin address (tests use port 0). Dropping the returned
/// future aborts everything at once, like a crash.
pub async fn run_with_pool(
    settings: Settings,
    pool: PgPool,
    cancel: CancellationToken,
    admin_bound: Option<oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    settings.validate()?;
    crate::metrics::describe();
    let keyring = settings.keyring.keyring()?;
    let renderer = render::Renderer::new(settings.template_dir.as_deref())?;
    let (email, sms) = providers(&settings)?;
    let limits = Arc::new(SendLimits::new(settings.send_rate_per_min));
    let sender = Arc::new(Sender {
        keyring,
        renderer,
        email,
        sms,
        limits: limits.clone(),
        max_retries: settings.email_max_retries,
        backoff: Duration::from_millis(200),
    });

    // The admin server lives until the whole run is over, including the drain.
    let admin_cancel = CancellationToken::new();
    let _admin_guard = admin_cancel.clone().drop_guard();
    let ready_pool = pool.clone();
    let ready: shared::ops::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move {
            if shared::db::ping(&pool).await {
                Ok(())
            } else {
                Err("postgres is not answering".to_owned())
            }
        })
    });
    let admin = shared::ops::serve(settings.admin_addr, ready, admin_cancel.clone()).await?;
    tracing::info!(%admin, "admin endpoints listening");
    if let Some(tx) = admin_bound {
        let _ = tx.send(admin);
    }

    let topics = settings.kafka.topics.clone();
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let consumer = intake::subscribe(
        &settings.kafka.kafka_brokers,
        &settings.group,
        &topics,
        tracker.clone(),
    )
    .await?;
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let (claim_tx, claim_rx) = mpsc::channel(settings.max_in_flight);
    let (done_tx, done_rx) = mpsc::channel(settings.max_in_flight);

    // Every task is owned here: dropping this future (a crash in tests) aborts them all.
    let mut stages = JoinSet::new();
    let held = pipeline::Held::default();
    stages.spawn(pipeline::claimer(
        pool.clone(),
        settings.lease(),
        sender,
        held.clone(),
        claim_rx,
        done_tx.clone(),
    ));
    stages.spawn(pipeline::writer(
        pool.clone(),
        topics.clone(),
        done_rx,
        tracker.clone(),
        Arc::new(intake::ConsumerOffsets(consumer.clone())),
        held.clone(),
        pipeline::Capacity {
            permits: permits.clone(),
            max: settings.max_in_flight,
        },
    ));
    let sweep_cancel = cancel.child_token();
    stages.spawn(sweeper::run(
        pool.clone(),
        topics.clone(),
        settings.max_lease_expiries,
        Duration::from_secs(settings.sweep_interval_secs),
        sweep_cancel.clone(),
    ));
    tracing::info!(group = %settings.group, max_in_flight = settings.max_in_flight, "consuming");

    let reader = intake::Intake {
        consumer: consumer.clone(),
        topics: topics.clone(),
        tracker,
        permits: permits.clone(),
        limits,
        claim_tx,
        done_tx,
    };
    let intake_result = intake::run(reader, cancel.clone()).await;
    // Intake returned: no more records. The claimer and writer finish what is in flight and
    // then end, because their inputs close.
    sweep_cancel.cancel();
    tracing::info!("shutting down: finishing bills in flight");
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = stages.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    tracing::error!("a consumer stage panicked");
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        stages.shutdown().await;
        // Hand unfinished bills back now rather than when their lease expires. Their offsets
        // were not stored; a provider that honours the idempotency key refuses a re-send of a
        // message that did go out.
        let leases: Vec<(uuid::Uuid, uuid::Uuid)> = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        match sweeper::hand_back(&pool, &topics, &leases).await {
            Ok(n) => tracing::warn!(
                handed_back = n,
                "grace period over; unfinished bills handed back"
            ),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "handing back unfinished bills failed; the sweeper will once their lease expires"
            ),
        }
    }
    intake::commit(&consumer);
    intake_result
}

fn providers(settings: &Settings) -> anyhow::Result<(Arc<dyn Provider>, Arc<dyn Provider>)> {
    let timeout = Duration::from_millis(settings.provider_timeout_ms);
    let sim = || -> Arc<dyn Provider> {
        Arc::new(SimulatedProvider::new(
            Duration::from_millis(settings.sim_latency_ms),
            settings.sim_failure_rate,
        ))
    };
    let http = |url: &str| -> anyhow::Result<Arc<dyn Provider>> {
        Ok(Arc::new(
            HttpProvider::new(url, timeout, settings.max_in_flight).context("provider client")?,
        ))
    };
    let email = match &settings.email_provider_url {
        Some(url) => http(url)?,
        None => sim(),
    };
    let sms = match &settings.sms_provider_url {
        Some(url) => http(url)?,
        None => sim(),
    };
    Ok((email, sms))
}
