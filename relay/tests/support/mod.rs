//! Test helpers: an in-process Kafka (rdkafka's `MockCluster`), outbox rows, a relay on its own
//! pool (as a separate process would have), reading a topic back, waiting with a deadline.

#![allow(dead_code)]

use billing_relay::{Relay, RelayOptions, RelayStats};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use shared::domain::{BillId, Channel};
use shared::outbox::NewOutboxEvent;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PARTITIONS: i32 = 3;
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub type Mock = MockCluster<'static, DefaultProducerContext>;

/// A three-broker mock cluster with one fresh topic.
pub fn kafka(topic: &str) -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic(topic, PARTITIONS, 1)
        .expect("create topic");
    mock
}

pub fn unique_topic(name: &str) -> String {
    format!("{name}.{}", Uuid::new_v4().simple())
}

/// Relay options for tests: quick polls, short delivery timeout and back-off.
pub fn options(brokers: &str) -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(100),
        message_timeout: Duration::from_millis(1500),
        max_backoff: Duration::from_millis(300),
        retention_interval: Duration::from_secs(3600),
        ..RelayOptions::new(brokers)
    }
}

/// A pool of its own on the test database, as another relay process would have.
pub async fn own_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("pool")
}

pub struct Running {
    pub cancel: CancellationToken,
    pub stats: Arc<RelayStats>,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("relay stops")
            .expect("relay task")
            .expect("relay result");
    }
}

pub async fn start_relay(pool: &PgPool, options: RelayOptions) -> Running {
    let relay = Relay::new(own_pool(pool).await, options)
        .await
        .expect("relay");
    let cancel = CancellationToken::new();
    let stats = relay.stats();
    let handle = tokio::spawn(relay.run(cancel.clone()));
    Running {
        cancel,
        stats,
        handle,
    }
}

/// Writes one event per bill in one transaction, like a writer would; `attempt` tells the
/// events of one bill apart (and their order).
pub async fn insert_round(pool: &PgPool, topic: &str, bills: &[BillId], attempt: i32) -> Vec<Uuid> {
    let events: Vec<NewOutboxEvent> = bills
        .iter()
        .map(|bill| {
            NewOutboxEvent::bill(
                topic,
                shared::events::event_type::EMAIL_REQUESTED,
                *bill,
                Channel::Email,
                attempt,
                0,
                Some(TRACEPARENT),
                None,
            )
        })
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    shared::outbox::insert(&mut tx, &events)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    events.iter().map(|e| e.id.0).collect()
}

pub fn bills(n: usize) -> Vec<BillId> {
    (0..n).map(|_| BillId::new()).collect()
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .expect(sql)
}

pub async fn unpublished(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM outbox_pending").await
}

/// Polls `check` until it holds, failing the test after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` up to the current high watermarks, in partition and offset
/// order. Call it once publishing is done: the watermarks then cover every record.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic))
        .await
        .expect("reader task")
}

fn read_topic_blocking(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut highs = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > 0 {
            highs.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assignment");
        }
    }
    let mut records = Vec::new();
    if highs.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done: HashMap<i32, i64> = HashMap::new();
    while done.len() < highs.len() {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or(b"")).into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: msg.partition(),
            offset: msg.offset(),
            key: String::from_utf8_lossy(msg.key().unwrap_or(b"")).into(),
            value: msg.payload().unwrap_or(b"").to_vec(),
            headers,
        });
        if msg.offset() + 1 >= highs[&msg.partition()] {
            done.insert(msg.partition(), msg.offset());
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// How many times each `event_id` header occurs.
pub fn counts_by_event(records: &[Record]) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for r in records {
        let id = Uuid::parse_str(&r.headers["event_id"]).expect("event_id header");
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Asserts that `expected` events, and nothing else, were each published exactly once.
pub fn assert_exactly_once(records: &[Record], expected: &[Uuid]) {
    let counts = counts_by_event(records);
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "published more than once: {dupes:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never published",
        missing.len()
    );
    assert_eq!(records.len(), expected.len(), "unexpected extra records");
}

/// Asserts each bill's events were published in the order they were written (`attempt`).
pub fn assert_per_bill_order(records: &[Record]) {
    let mut last: HashMap<&str, (i32, i32)> = HashMap::new();
    for r in records {
        let event: shared::events::BillEvent =
            serde_json::from_slice(&r.value).expect("value is a BillEvent");
        if let Some((partition, attempt)) = last.get(r.key.as_str()) {
            assert_eq!(*partition, r.partition, "one key, one partition");
            assert!(event.attempt > *attempt, "bill {} out of order", r.key);
        }
        last.insert(&r.key, (r.partition, event.attempt));
    }
}
