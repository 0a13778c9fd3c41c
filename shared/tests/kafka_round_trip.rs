//! A record survives a round trip through a Kafka-protocol broker with the idempotent producer:
//! the broker in `KAFKA_BROKERS` when set (the local environment's), else an in-process mock.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use std::time::Duration;

#[tokio::test]
async fn a_record_round_trips_through_the_broker_with_the_idempotent_producer() {
    let topic = format!("round-trip-{}", uuid::Uuid::now_v7());
    let mock;
    let brokers = match std::env::var("KAFKA_BROKERS") {
        Ok(b) => {
            // librdkafka's mock cluster (the local environment's default broker) answers no
            // CreateTopics; it creates a topic on first use instead.
            if let Err(e) = shared::kafka::ensure_topics(&b, &[&topic], 3).await {
                eprintln!("CreateTopics unavailable ({e:#}); relying on auto-creation");
            }
            b
        }
        Err(_) => {
            mock = MockCluster::<DefaultProducerContext>::new(1).unwrap();
            mock.create_topic(&topic, 3, 1).unwrap();
            mock.bootstrap_servers()
        }
    };

    let producer: FutureProducer =
        shared::kafka::create(shared::kafka::idempotent_producer_config(&brokers))
            .await
            .unwrap();
    let key = uuid::Uuid::now_v7().to_string();
    let sends: Vec<_> = (0..100)
        .map(|i| {
            let value = format!("{{\"n\":{i}}}");
            let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(
                OwnedHeaders::new().insert(Header {
                    key: "event_id",
                    value: Some(&i.to_string()),
                }),
            );
            producer.send_result(record).expect("queued")
        })
        .collect();
    for s in sends {
        s.await.expect("delivery report").expect("delivered");
    }

    let group = format!("rt-{}", uuid::Uuid::now_v7());
    let consumer: StreamConsumer = shared::kafka::create(
        shared::kafka::manual_store_consumer_config(&brokers, &group),
    )
    .await
    .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 100 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("all records within the deadline")
            .unwrap();
        assert_eq!(msg.key(), Some(key.as_bytes()));
        let header = msg.headers().unwrap().get(0);
        assert_eq!(header.key, "event_id");
        let v: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        seen.push(v["n"].as_i64().unwrap());
    }
    // One key, one partition: the idempotent producer keeps the order.
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
}
