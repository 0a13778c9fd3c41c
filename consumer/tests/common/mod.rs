//! Test harness: a Kafka-protocol broker (librdkafka's in-process mock cluster), provider-sim
//! over real HTTP, a tiny stand-in for the relay (tests may produce; the consumer may not),
//! bills written the way the api writes them, and the consumer's `run` as a task.
#![allow(dead_code)]

use billing_consumer::{Cli, Settings};
use clap::Parser;
use provider_sim::{SimConfig, SimHandle};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::config::Topics;
use shared::crypto::Keyring;
use shared::domain::{BillId, Channel};
use shared::events::event_type;
use shared::outbox::NewOutboxEvent;
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Unique topic names for one test.
pub fn topics() -> Topics {
    let n = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    Topics {
        email: format!("bills.email.{n}"),
        sms: format!("bills.sms.{n}"),
        dlt: format!("bills.dlt.{n}"),
    }
}

/// A mock broker with the three topics.
pub fn broker(
    topics: &Topics,
    partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for t in [&topics.email, &topics.sms, &topics.dlt] {
        cluster
            .create_topic(t, partitions, 1)
            .expect("create topic");
    }
    cluster
}

pub async fn provider(latency_ms: u64) -> SimHandle {
    let config = SimConfig {
        latency: Duration::from_millis(latency_ms),
        failure_rate: 0.0,
        transient_rate: 0.0,
        seed: Some(7),
    };
    provider_sim::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("provider-sim")
}

pub fn keyring_spec() -> String {
    // one spec per process, so every consumer in a test decrypts what the test encrypted
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| Keyring::generate_spec("test")).clone()
}

pub fn keyring() -> Keyring {
    Keyring::parse(&keyring_spec()).unwrap()
}

/// Consumer settings for a test; `extra` are more flags.
pub fn settings(
    brokers: &str,
    topics: &Topics,
    sim: &SimHandle,
    group: &str,
    extra: &[&str],
) -> Settings {
    let spec = keyring_spec();
    let email_url = sim.email_url();
    let sms_url = sim.sms_url();
    let defaults: Vec<(&str, &str)> = vec![
        ("--kafka-brokers", brokers),
        ("--topic-email", &topics.email),
        ("--topic-sms", &topics.sms),
        ("--topic-dlt", &topics.dlt),
        ("--encryption-keys", &spec),
        ("--admin-addr", "127.0.0.1:0"),
        ("--group", group),
        ("--email-provider-url", &email_url),
        ("--sms-provider-url", &sms_url),
        ("--sweep-interval-secs", "1"),
        ("--shutdown-grace-secs", "10"),
        ("--email-max-retries", "1"),
    ];
    let mut args: Vec<&str> = vec!["billing-consumer"];
    // a flag in `extra` replaces its default
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    Cli::try_parse_from(args).expect("settings").settings
}

/// The consumer running as a task.
pub struct Running {
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub cancel: CancellationToken,
    /// Where /healthz, /readyz and /metrics are served.
    pub admin: std::net::SocketAddr,
}

pub async fn start(settings: Settings, pool: &PgPool) -> Running {
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let run = billing_consumer::run_with_pool(settings, pool.clone(), cancel.clone(), Some(tx));
    let handle = tokio::spawn(run);
    let admin = rx
        .await
        .expect("the consumer binds its admin address first");
    Running {
        handle,
        cancel,
        admin,
    }
}

impl Running {
    /// Graceful shutdown; fails the test if the consumer failed.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle
            .await
            .expect("consumer task")
            .expect("consumer run");
    }

    /// A crash: every task is dropped mid-work, nothing is written or committed on the way out.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// What the api does for one bill: the row (recipient encrypted), its items and the outbox
/// row for the email topic, in one transaction.
pub async fn enqueue(pool: &PgPool, topics: &Topics, name: &str, email: &str, phone: &str) -> Uuid {
    let id = BillId::new();
    let k = keyring();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO bills (id, recipient_name, recipient_email, recipient_phone, billing_period, due_date, currency, total_minor)
         VALUES ($1, $2, $3, $4, '2026-11', DATE '2026-12-15', 'KRW', 85000)",
    )
    .bind(id.0)
    .bind(k.encrypt(id.0, "name", name))
    .bind(k.encrypt(id.0, "email", email))
    .bind(k.encrypt(id.0, "phone", phone))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO bill_items (bill_id, position, name, amount_minor) VALUES ($1, 0, 'Mobile plan', 55000), ($1, 1, 'Device', 30000)")
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    let event = NewOutboxEvent::bill(
        &topics.email,
        event_type::EMAIL_REQUESTED,
        id,
        Channel::Email,
        0,
        0,
        None,
        None,
    );
    shared::outbox::insert(&mut tx, &[event]).await.unwrap();
    tx.commit().await.unwrap();
    id.0
}

pub fn producer(brokers: &str) -> FutureProducer {
    shared::kafka::idempotent_producer_config(brokers)
        .create()
        .expect("producer")
}

/// Produces one record directly (a duplicate or a poison record).
pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// A stand-in for billing-relay: publishes every committed outbox row once, in `seq` order of
/// what it finds, remembering what it sent (it leaves the relay's position alone).
pub fn relay(pool: &PgPool, brokers: &str) -> JoinHandle<()> {
    let pool = pool.clone();
    let producer = producer(brokers);
    tokio::spawn(async move {
        let mut sent: Vec<i64> = Vec::new();
        loop {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT seq, topic, aggregateid, payload::text FROM outbox
                  WHERE seq <> ALL($1) ORDER BY seq LIMIT 500",
            )
            .bind(&sent)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            if rows.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            for (seq, topic, key, payload) in &rows {
                produce(&producer, topic, key, payload.as_bytes()).await;
                sent.push(*seq);
            }
        }
    })
}

/// Waits until `check` holds, polling, or panics with `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn status(pool: &PgPool, id: Uuid) -> (String, String) {
    sqlx::query_as("SELECT status, channel FROM bills WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Outbox rows written for the dead-letter topic, as text.
pub async fn dead_letters(pool: &PgPool, topics: &Topics) -> Vec<String> {
    sqlx::query_scalar("SELECT payload::text FROM outbox_events WHERE topic = $1 ORDER BY seq")
        .bind(&topics.dlt)
        .fetch_all(pool)
        .await
        .unwrap()
}
