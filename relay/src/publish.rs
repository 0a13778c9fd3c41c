//! The Kafka side of the relay: an idempotent `FutureProducer` that can be rebuilt after a fatal
//! error, sending a whole batch without awaiting each record, and the classification of
//! delivery errors into what the relay does next.

use crate::position::OutboxRow;
use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

/// What a failed delivery means for the row and the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker is unreachable, slow or busy: leave the row unpublished, back off, retry.
    Retriable,
    /// This row cannot be published as it is (unknown or invalid topic, too large): record the
    /// error on the row and retry it slowly, without holding up other rows.
    Permanent,
    /// The idempotent producer is in a fatal state: nothing more can go through it, so the
    /// relay rebuilds it. The row is retried like a retriable one.
    Fatal,
}

/// Why one record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    pub class: ErrorClass,
    pub message: String,
}

impl PublishError {
    fn from_kafka(err: &KafkaError) -> Self {
        Self {
            class: classify(err),
            message: err.to_string(),
        }
    }
}

/// Sorts a producer error into what to do about it.
pub fn classify(err: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    let code = match err {
        KafkaError::MessageProduction(code) => *code,
        _ => return ErrorClass::Retriable,
    };
    match code {
        C::Fatal => ErrorClass::Fatal,
        C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::InvalidTopic
        | C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidMessage
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed => ErrorClass::Permanent,
        _ => ErrorClass::Retriable,
    }
}

/// Settings of the relay's producer: the shared idempotent configuration (`acks=all`,
/// `enable.idempotence=true`) with the relay's delivery timeout. An unknown topic fails its
/// records after at most the same time instead of librdkafka's 30 s default wait.
pub fn producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    let mut config = shared::kafka::idempotent_producer_config(brokers);
    let timeout_ms = message_timeout.as_millis().max(1);
    config
        .set("message.timeout.ms", timeout_ms.to_string())
        .set(
            "topic.metadata.propagation.max.ms",
            timeout_ms.min(10_000).to_string(),
        );
    config
}

/// The current producer, replaced when it reports a fatal error.
pub struct Publisher {
    config: ClientConfig,
    current: RwLock<Arc<FutureProducer>>,
}

impl Publisher {
    pub async fn new(config: ClientConfig) -> anyhow::Result<Self> {
        let producer: FutureProducer = shared::kafka::create(config.clone())
            .await
            .context("failed to create the producer")?;
        Ok(Self {
            config,
            current: RwLock::new(Arc::new(producer)),
        })
    }

    /// The producer to send the next batch with.
    pub async fn producer(&self) -> Arc<FutureProducer> {
        self.current.read().await.clone()
    }

    /// Replaces `failed` by a fresh producer, unless another worker already did. Records still
    /// queued in the failed producer have already been reported as failed, so their rows stay
    /// unpublished and are sent again through the new one. `true` when this call rebuilt it.
    pub async fn rebuild(&self, failed: &Arc<FutureProducer>) -> anyhow::Result<bool> {
        let mut current = self.current.write().await;
        if !Arc::ptr_eq(&current, failed) {
            return Ok(false);
        }
        let producer: FutureProducer = shared::kafka::create(self.config.clone())
            .await
            .context("failed to rebuild the producer")?;
        *current = Arc::new(producer);
        tracing::warn!("producer rebuilt after a fatal error");
        Ok(true)
    }

    /// `Err` with the reason when the producer is in a fatal state.
    pub async fn health(&self) -> Result<(), String> {
        match self.producer().await.client().fatal_error() {
            None => Ok(()),
            Some((code, reason)) => Err(format!("producer fatal error {code}: {reason}")),
        }
    }

    /// Waits (off the runtime) until queued records are delivered or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer().await;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
        }
    }
}

/// The fatal error of `producer`, if it has one.
pub fn fatal_error(producer: &FutureProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

/// The row's record headers, or why it has none: a `headers` value that is not a JSON object
/// (the writers never store one; a hand-written row might) is the row's own error, so the row
/// is parked with it rather than sent without its headers.
fn record_headers(row: &OutboxRow) -> Result<OwnedHeaders, PublishError> {
    let pairs = header_pairs(&row.headers).map_err(|e| PublishError {
        class: ErrorClass::Permanent,
        message: format!("outbox row headers are not a JSON object: {e}"),
    })?;
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_ref()),
        });
    }
    Ok(headers)
}

/// A record header's name and value.
pub type HeaderPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The `(name, value)` pairs of a headers JSON object, borrowed from its text where no escape
/// is involved: string values as they are, other values as their JSON text, nulls left out.
pub fn header_pairs(json: &str) -> Result<Vec<HeaderPair<'_>>, serde_json::Error> {
    Ok(serde_json::from_str::<Pairs<'_>>(json)?.0)
}

/// A string borrowed from the JSON text when it holds no escape.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

struct Pairs<'a>(Vec<HeaderPair<'a>>);

impl<'de> Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Pairs<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'de>, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Text(key)) = map.next_key()? {
                    let raw: &'de RawValue = map.next_value()?;
                    let value = match raw.get() {
                        "null" => continue,
                        text if text.starts_with('"') => {
                            serde_json::from_str::<Text<'de>>(text)
                                .map_err(serde::de::Error::custom)?
                                .0
                        }
                        text => Cow::Borrowed(text),
                    };
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// Sends every row without awaiting each record, then awaits all delivery reports. Returns
/// one result per row, in the order of `rows`.
pub async fn send_all(
    producer: &FutureProducer,
    rows: &[&OutboxRow],
) -> Vec<Result<(), PublishError>> {
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let headers = match record_headers(row) {
            Ok(headers) => headers,
            Err(e) => {
                pending.push(Err(e));
                continue;
            }
        };
        let mut record = FutureRecord::to(&row.topic)
            .key(row.aggregateid.as_bytes())
            .payload(row.payload.as_bytes())
            .headers(headers);
        let sent = loop {
            match producer.send_result(record) {
                Ok(delivery) => break Ok(delivery),
                // The local queue is full: its own thread drains it; wait and try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => break Err(PublishError::from_kafka(&e)),
            }
        };
        pending.push(sent);
    }
    let mut results = Vec::with_capacity(pending.len());
    for sent in pending {
        let result = match sent {
            Err(e) => Err(e),
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(PublishError::from_kafka(&e)),
                Err(_canceled) => Err(PublishError {
                    class: ErrorClass::Retriable,
                    message: "producer dropped before reporting delivery".into(),
                }),
            },
        };
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_strings_as_they_are_and_other_values_as_json_text() {
        let pairs = header_pairs(
            r#"{"event_id": "e1", "n": 3, "skip": null, "esc": "a\"b", "obj": {"x": [1]}}"#,
        )
        .unwrap();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            pairs,
            [
                ("event_id", "e1"),
                ("n", "3"),
                ("esc", "a\"b"),
                ("obj", r#"{"x": [1]}"#)
            ]
        );
        assert!(matches!(
            header_pairs(r#"{"event_id": "e1"}"#).unwrap()[0].1,
            Cow::Borrowed(_)
        ));
        assert!(header_pairs("[1]").is_err());
        assert!(header_pairs("{}").unwrap().is_empty());
    }

    #[test]
    fn broker_trouble_is_retriable_and_bad_rows_are_permanent() {
        let produce = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageTimedOut)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::AllBrokersDown)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::QueueFull)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::UnknownTopic)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::UnknownTopicOrPartition)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::Fatal)),
            ErrorClass::Fatal
        );
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Retriable);
    }
}
