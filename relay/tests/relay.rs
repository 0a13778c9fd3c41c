//! The relay against real Postgres (`#[sqlx::test]`, a fresh database per test) and a
//! Kafka-protocol broker (rdkafka's in-process `MockCluster`, a fresh topic per test).

mod support;

use billing_relay::retention;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use shared::events::BillEvent;
use shared::outbox::NewOutboxEvent;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn every_row_is_published_exactly_once_with_its_key_headers_and_value(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    let bills = bills(100);
    let mut expected = Vec::new();
    for attempt in 0..3 {
        expected.extend(insert_round(&pool, &topic, &bills, attempt).await);
    }

    let relay = start_relay(&pool, options(&brokers)).await;
    wait_until("every row is published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;

    let records = read_topic(&brokers, &topic).await;
    assert_exactly_once(&records, &expected);
    assert_per_bill_order(&records);
    let payloads: HashMap<Uuid, serde_json::Value> =
        sqlx::query_as::<_, (Uuid, serde_json::Value)>("SELECT id, payload FROM outbox_events")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for r in &records {
        let event: BillEvent = serde_json::from_slice(&r.value).expect("value is a BillEvent");
        let stored: BillEvent = serde_json::from_value(payloads[&event.event_id].clone()).unwrap();
        assert_eq!(event, stored, "the value is the row's payload");
        assert_eq!(r.key, event.bill_id.to_string(), "key = bill id");
        assert_eq!(r.headers["event_id"], event.event_id.to_string());
        assert_eq!(r.headers["event_type"], event.event_type);
        assert_eq!(r.headers["traceparent"], TRACEPARENT);
    }
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_notification_wakes_the_relay_without_waiting_for_the_poll(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    let relay = start_relay(
        &pool,
        billing_relay::RelayOptions {
            poll_interval: Duration::from_secs(3600),
            ..options(&brokers)
        },
    )
    .await;
    // Insert only once the relay listens, so the rows can only be found through NOTIFY.
    wait_until("the relay listens", WAIT, || async {
        let sql = "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND query ILIKE 'LISTEN%outbox_inserted%'";
        count(&pool, sql).await == 1
    })
    .await;

    let expected = insert_round(&pool, &topic, &bills(5), 0).await;
    wait_until("the rows are published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;

    assert_exactly_once(&read_topic(&brokers, &topic).await, &expected);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn two_relays_on_one_database_publish_each_row_once_in_per_bill_order(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    // Small chunks, so the two relays take the lane from each other a lot.
    let opts = billing_relay::RelayOptions {
        batch_size: 20,
        ..options(&brokers)
    };
    let first = start_relay(&pool, opts.clone()).await;
    let second = start_relay(&pool, opts).await;

    let bills = bills(60);
    let mut expected = Vec::new();
    for attempt in 0..6 {
        expected.extend(insert_round(&pool, &topic, &bills, attempt).await);
    }
    wait_until("every row is published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    // Read the counters once both have stopped: a worker bumps them just after its commit,
    // which the wait above may have seen first.
    let (a, b) = (first.stats.clone(), second.stats.clone());
    first.stop().await;
    second.stop().await;
    let (a, b) = (a.published(), b.published());

    let records = read_topic(&brokers, &topic).await;
    assert_exactly_once(&records, &expected);
    assert_per_bill_order(&records);
    assert_eq!(a + b, expected.len() as u64);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_broker_outage_loses_nothing_and_everything_is_published_once_it_returns(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    kafka.broker_down(-1).expect("all brokers down");
    let bills = bills(50);
    let mut expected = insert_round(&pool, &topic, &bills, 0).await;
    expected.extend(insert_round(&pool, &topic, &bills, 1).await);

    let relay = start_relay(&pool, options(&brokers)).await;
    wait_until("the chunk failed twice", WAIT, || async {
        relay.stats.retriable_failures.load(Ordering::Relaxed) >= 2 * 100
    })
    .await;
    assert_eq!(
        unpublished(&pool).await,
        100,
        "nothing is marked published while down"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox_parked").await,
        0,
        "a chunk the broker took nothing of is retried whole, not parked row by row"
    );

    kafka.broker_up(-1).expect("brokers up");
    wait_until("every row is published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;

    let records = read_topic(&brokers, &topic).await;
    assert_exactly_once(&records, &expected);
    assert_per_bill_order(&records);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_row_for_an_unknown_topic_is_recorded_and_does_not_block_other_bills(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let missing = unique_topic("bills.missing");
    let kafka = kafka(&topic);
    // Created with a known partition count (the reader below reads those partitions), then
    // made to answer "unknown topic".
    kafka
        .create_topic(&missing, PARTITIONS, 1)
        .expect("create topic");
    kafka
        .topic_error(
            &missing,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .expect("topic error");
    let brokers = kafka.bootstrap_servers();
    let stuck_bill = bills(1);
    let stuck = insert_round(&pool, &missing, &stuck_bill, 0).await[0];
    // A later event of the same bill must wait behind the stuck one; other bills must not.
    let behind = insert_round(&pool, &topic, &stuck_bill, 1).await[0];
    let others = insert_round(&pool, &topic, &bills(20), 0).await;

    let relay = start_relay(&pool, options(&brokers)).await;
    wait_until(
        "the unknown-topic row is recorded with its error",
        WAIT,
        || async {
            let sql = format!(
                "SELECT count(*) FROM outbox_events WHERE id = '{stuck}'
                    AND last_error ILIKE '%unknown%' AND next_attempt_at > now()
                    AND NOT published"
            );
            count(&pool, &sql).await == 1
        },
    )
    .await;
    wait_until("the other bills are published", WAIT, || async {
        unpublished(&pool).await == 2
    })
    .await;
    relay.stop().await;

    let (published, error): (bool, Option<String>) =
        sqlx::query_as("SELECT published, last_error FROM outbox_events WHERE id = $1")
            .bind(stuck)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!published);
    let error = error.unwrap_or_default();
    assert!(
        error.to_lowercase().contains("unknown"),
        "the error names the cause: {error}"
    );
    let behind_published: bool =
        sqlx::query_scalar("SELECT published FROM outbox_events WHERE id = $1")
            .bind(behind)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        !behind_published,
        "a bill's later event waits for the earlier one"
    );
    assert_exactly_once(&read_topic(&brokers, &topic).await, &others);

    // Once the topic answers, the parked row goes out on its next retry, and the event held
    // behind it after it.
    kafka
        .topic_error(&missing, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .expect("clear the topic error");
    let relay = start_relay(&pool, options(&brokers)).await;
    wait_until("the parked rows are published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;
    let (stuck_at, behind_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT (SELECT published_at FROM outbox_events WHERE id = $1),
                    (SELECT published_at FROM outbox_events WHERE id = $2)",
        )
        .bind(stuck)
        .bind(behind)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stuck_at < behind_at, "the bill's events went out in order");
    assert_exactly_once(&read_topic(&brokers, &missing).await, &[stuck]);
    let mut all = others.clone();
    all.push(behind);
    assert_exactly_once(&read_topic(&brokers, &topic).await, &all);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_record_too_large_for_the_broker_is_recorded_and_the_others_are_published(pool: PgPool) {
    let huge = "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic)
                VALUES (gen_random_uuid(), 'bill', gen_random_uuid()::text,
                        'bill.email_requested',
                        jsonb_build_object('padding', repeat('x', 2000000)), $1)
                RETURNING id";
    a_bad_row_is_parked_and_the_others_are_published(&pool, huge, "size").await;
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_row_whose_headers_are_not_an_object_is_parked_with_why_and_the_others_are_published(
    pool: PgPool,
) {
    let bad = "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, topic, headers)
               VALUES (gen_random_uuid(), 'bill', gen_random_uuid()::text,
                       'bill.email_requested', '{}', $1, '[1]')
               RETURNING id";
    a_bad_row_is_parked_and_the_others_are_published(&pool, bad, "headers").await;
}

/// Ten good rows and one written by `insert_bad` (`$1` = the topic, returns the id): the good
/// ones are published exactly once, the bad one is recorded unpublished with an error that
/// names `cause`.
async fn a_bad_row_is_parked_and_the_others_are_published(
    pool: &PgPool,
    insert_bad: &str,
    cause: &str,
) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    let others = insert_round(pool, &topic, &bills(10), 0).await;
    let bad: Uuid = sqlx::query_scalar(insert_bad)
        .bind(&topic)
        .fetch_one(pool)
        .await
        .unwrap();

    let relay = start_relay(pool, options(&brokers)).await;
    wait_until(
        "the others are published and the bad row recorded",
        WAIT,
        || async {
            let sql = format!(
                "SELECT count(*) FROM outbox_events
              WHERE (id = '{bad}' AND last_error IS NOT NULL AND NOT published)
                 OR (id <> '{bad}' AND published)"
            );
            count(pool, &sql).await == 11
        },
    )
    .await;
    relay.stop().await;

    let error: String = sqlx::query_scalar("SELECT last_error FROM outbox_events WHERE id = $1")
        .bind(bad)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        error.to_lowercase().contains(cause),
        "the error names the cause: {error}"
    );
    assert_exactly_once(&read_topic(&brokers, &topic).await, &others);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_fatal_producer_error_rebuilds_the_producer_and_loses_nothing(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    // A sequence error on the head-of-line request puts an idempotent producer in a fatal state.
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let expected = insert_round(&pool, &topic, &bills(30), 0).await;

    let relay = start_relay(&pool, options(&brokers)).await;
    wait_until("the producer is rebuilt", WAIT, || async {
        relay.stats.producer_rebuilds.load(Ordering::Relaxed) >= 1
    })
    .await;
    wait_until("every row is published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;

    let counts = counts_by_event(&read_topic(&brokers, &topic).await);
    for id in &expected {
        assert!(counts.get(id).copied().unwrap_or(0) >= 1, "event {id} lost");
    }
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn shutdown_finishes_the_batch_in_flight(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    for broker in 1..=3 {
        kafka
            .broker_round_trip_time(broker, Duration::from_millis(300))
            .expect("slow broker");
    }
    let expected = insert_round(&pool, &topic, &bills(40), 0).await;
    let opts = billing_relay::RelayOptions {
        message_timeout: Duration::from_secs(20),
        ..options(&brokers)
    };
    let relay = start_relay(&pool, opts).await;
    wait_until("a batch is in flight", WAIT, || async {
        relay.stats.in_flight.load(Ordering::SeqCst) > 0
    })
    .await;

    let stats = relay.stats.clone();
    relay.stop().await;

    assert_eq!(
        unpublished(&pool).await,
        0,
        "the batch in flight was committed"
    );
    assert_eq!(stats.published(), 40);
    assert_exactly_once(&read_topic(&brokers, &topic).await, &expected);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_row_committed_long_after_later_rows_is_still_published(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let brokers = kafka.bootstrap_servers();
    let relay = start_relay(&pool, options(&brokers)).await;

    // A writer takes a `seq`, then stays open while many later rows are written and published,
    // so the relay's position moves past its `seq` before it commits.
    let late = NewOutboxEvent::bill(
        &topic,
        shared::events::event_type::EMAIL_REQUESTED,
        shared::domain::BillId::new(),
        shared::domain::Channel::Email,
        0,
        0,
        None,
        None,
    );
    let mut slow_writer = pool.begin().await.unwrap();
    shared::outbox::insert(&mut slow_writer, std::slice::from_ref(&late))
        .await
        .unwrap();
    let late_seq: i64 = sqlx::query_scalar("SELECT seq FROM outbox WHERE id = $1")
        .bind(late.id.0)
        .fetch_one(&mut *slow_writer)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.extend(insert_round(&pool, &topic, &bills(600), 0).await);
    }
    wait_until("the later rows are published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    wait_until(
        "the relay's position is past the open row",
        WAIT,
        || async {
            relay.stats.published() == 1800
                && count(
                    &pool,
                    "SELECT count(*) FROM outbox_relay WHERE tick IS NULL",
                )
                .await
                    == 1
        },
    )
    .await;
    let later = format!("SELECT count(*) FROM outbox WHERE seq > {late_seq}");
    assert_eq!(count(&pool, &later).await, 1800);
    slow_writer.commit().await.unwrap();
    expected.push(late.id.0);

    wait_until("the late row is published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;
    assert_exactly_once(&read_topic(&brokers, &topic).await, &expected);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn retention_deletes_only_rows_published_longer_ago_than_the_age(pool: PgPool) {
    let topic = unique_topic("bills.email");
    let kafka = kafka(&topic);
    let ids = insert_round(&pool, &topic, &bills(7), 0).await;
    let relay = start_relay(&pool, options(&kafka.bootstrap_servers())).await;
    wait_until("the rows are published", WAIT, || async {
        unpublished(&pool).await == 0
    })
    .await;
    relay.stop().await;
    let (old, recent) = ids.split_at(4);
    let unpublished_old = insert_round(&pool, &topic, &bills(3), 0).await;
    for (rows, age) in [
        (old, "48 hours"),
        (recent, "1 hour"),
        (&unpublished_old[..], "72 hours"),
    ] {
        sqlx::query(&format!(
            "UPDATE outbox SET created_at = now() - interval '{age}' WHERE id = ANY($1)"
        ))
        .bind(rows)
        .execute(&pool)
        .await
        .unwrap();
    }

    let age = Duration::from_secs(24 * 3600);
    let deleted = retention::purge(
        &pool,
        age,
        3,
        Duration::from_millis(1),
        &CancellationToken::new(),
    )
    .await
    .unwrap();

    assert_eq!(deleted, 4);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let kept: Vec<Uuid> = recent.iter().chain(&unpublished_old).copied().collect();
    assert_eq!(left, kept);
    assert_eq!(
        unpublished(&pool).await,
        3,
        "retention never touches unpublished rows, however old"
    );
}
