//! A replayed bill, end to end in the consumer: a bill killed by a provider outage, replayed the
//! way `POST /v1/admin/dead-letters/{id}/replay` does it (api/src/routes/admin/replay.rs; the
//! api's own tests cover the endpoint), is sent again for real under a new idempotency key and
//! ends SENT. The bill's trace context travels in every outbox row the consumer writes for it.

mod common;

use common::*;
use shared::domain::{BillId, Channel};
use shared::events::event_type;
use shared::outbox::NewOutboxEvent;
use sqlx::PgPool;
use uuid::Uuid;

const FIRST_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const REPLAY_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// What the api's replay does, in one transaction: DEAD -> PENDING(email) with the replay count
/// incremented and the per-replay counters reset, and a `bills.email` outbox row carrying the
/// new replay count and the replay request's trace context.
async fn replay(pool: &PgPool, topics: &shared::config::Topics, id: Uuid) -> i32 {
    let mut tx = pool.begin().await.unwrap();
    let replay_count: i32 = sqlx::query_scalar(
        "UPDATE bills SET status = 'PENDING', channel = 'email',
                replay_count = replay_count + 1, attempts = 0, lease_expiries = 0,
                claim_token = NULL, lease_until = NULL, last_error = NULL, dead_at = NULL,
                traceparent = $2, updated_at = now()
          WHERE id = $1 AND status = 'DEAD'
      RETURNING replay_count",
    )
    .bind(id)
    .bind(REPLAY_TRACE)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let event = NewOutboxEvent::bill(
        &topics.email,
        event_type::EMAIL_REQUESTED,
        BillId(id),
        Channel::Email,
        0,
        replay_count,
        Some(REPLAY_TRACE),
        None,
    );
    shared::outbox::insert(&mut tx, &[event]).await.unwrap();
    tx.commit().await.unwrap();
    replay_count
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_replayed_dead_bill_is_sent_again_under_a_new_key_and_ends_sent(pool: PgPool) {
    // Arrange: both providers unreachable, so the bill dies on email, then on SMS.
    let topics = topics();
    let cluster = broker(&topics, 1);
    let brokers = cluster.bootstrap_servers();
    let sim = provider(10).await;
    let relay = relay(&pool, &brokers);
    let id = enqueue(
        &pool,
        &topics,
        "Kim Minsu",
        "minsu@example.kr",
        "+821012345678",
    )
    .await;
    sqlx::query("UPDATE bills SET traceparent = $2 WHERE id = $1")
        .bind(id)
        .bind(FIRST_TRACE)
        .execute(&pool)
        .await
        .unwrap();
    let outage = [
        "--email-provider-url",
        "http://127.0.0.1:1/v1/email",
        "--sms-provider-url",
        "http://127.0.0.1:1/v1/sms",
    ];
    let consumer = start(settings(&brokers, &topics, &sim, "replay", &outage), &pool).await;
    eventually(60, "bill DEAD after the outage", || async {
        status(&pool, id).await == ("DEAD".into(), "sms".into())
    })
    .await;
    consumer.stop().await;
    // The fallback and dead-letter rows continue the bill's trace.
    let traces: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT type, headers->>'traceparent' FROM outbox_events
          WHERE aggregateid = $1 AND type <> 'bill.email_requested' ORDER BY seq",
    )
    .bind(id.to_string())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        traces,
        vec![
            ("bill.sms_requested".into(), Some(FIRST_TRACE.into())),
            ("bill.dead".into(), Some(FIRST_TRACE.into())),
        ]
    );
    // The provider has already seen the first key for this bill (say, a send whose answer was
    // lost before the outage): a replay under that key would be swallowed as a duplicate.
    let client = billing_consumer::send::http::HttpProvider::new(
        &sim.email_url(),
        std::time::Duration::from_secs(5),
        1,
    )
    .unwrap();
    let first_key = format!("{id}:email:0");
    let email = billing_consumer::send::Message::Email {
        to: "minsu@example.kr".into(),
        subject: "Your bill".into(),
        html: "<p>Your bill</p>".into(),
        text: "Your bill".into(),
    };
    billing_consumer::send::Provider::send(&client, &email, &first_key)
        .await
        .unwrap();

    // Act: the outage is over; the operator replays the bill.
    assert_eq!(replay(&pool, &topics, id).await, 1);
    let consumer = start(settings(&brokers, &topics, &sim, "replay", &[]), &pool).await;
    eventually(60, "replayed bill SENT", || async {
        status(&pool, id).await == ("SENT".into(), "email".into())
    })
    .await;
    consumer.stop().await;
    relay.abort();

    // Assert: a real second send (delivered, not a duplicate) under the new key.
    let stats = sim.stats();
    assert_eq!(
        (stats.email.delivered, stats.email.duplicates),
        (2, 0),
        "the replay was delivered, not answered as a duplicate of the first key"
    );
    let history: Vec<(String, String, i32, String)> = sqlx::query_as(
        "SELECT channel, outcome, replay_count, idempotency_key FROM delivery_attempts
          WHERE bill_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            ("email".into(), "FAILED".into(), 0, first_key),
            ("sms".into(), "FAILED".into(), 0, format!("{id}:sms:0")),
            ("email".into(), "SENT".into(), 1, format!("{id}:email:1")),
        ]
    );
    let (replay_count, traceparent): (i32, String) =
        sqlx::query_as("SELECT replay_count, traceparent FROM bills WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((replay_count, traceparent.as_str()), (1, REPLAY_TRACE));
}
