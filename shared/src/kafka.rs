//! Kafka client builders. `ClientConfig::create` blocks (it resolves and connects), so the
//! async builders run it on the blocking pool.

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Settings of the idempotent producer: no duplicates or reordering from retries within a
/// producer session, every record acknowledged by all in-sync replicas.
pub fn idempotent_producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .set("socket.keepalive.enable", "true");
    c
}

/// Settings of a consumer that stores offsets itself (`enable.auto.offset.store=false`), so an
/// offset is committed only once the application stored it.
pub fn manual_store_consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "50")
        .set("socket.keepalive.enable", "true");
    c
}

/// Builds any rdkafka client off the async runtime.
pub async fn create<T>(config: ClientConfig) -> anyhow::Result<T>
where
    T: FromClientConfig + Send + 'static,
{
    tokio::task::spawn_blocking(move || config.create::<T>())
        .await
        .context("client builder task panicked")?
        .context("failed to create Kafka client")
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub async fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    let admin: AdminClient<DefaultClientContext> = create(cfg).await?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    // Bounded: a broker without CreateTopics (librdkafka's mock cluster) must not hang start-up.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .context("CreateTopics failed")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("failed to create topic {topic}: {code}"),
        }
    }
    Ok(())
}
