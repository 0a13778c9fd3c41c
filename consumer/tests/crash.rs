//! A consumer killed with bills in flight: after a restart every bill ends SENT or DEAD, no
//! recipient receives a bill twice, and the provider refuses as duplicates exactly the bills
//! it had delivered whose outcome was not yet recorded when the consumer died.

mod common;

use common::*;
use sqlx::PgPool;

const BILLS: i64 = 300;

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn after_a_crash_with_bills_in_flight_every_bill_ends_terminal_and_nobody_gets_a_bill_twice(
    pool: PgPool,
) {
    // Arrange: a slow provider, so many bills are in flight when the consumer dies.
    let topics = topics();
    let cluster = broker(&topics, 2);
    let brokers = cluster.bootstrap_servers();
    let sim = provider(300).await;
    let relay = relay(&pool, &brokers);
    for i in 0..BILLS {
        enqueue(
            &pool,
            &topics,
            "Kim Minsu",
            &format!("minsu{i}@example.kr"),
            "+821012345678",
        )
        .await;
    }
    let extra = ["--lease-secs", "2", "--max-in-flight", "100"];

    // Act: kill the first consumer mid-work.
    let first = start(settings(&brokers, &topics, &sim, "crash", &extra), &pool).await;
    eventually(60, "some bills sent", || async {
        count(&pool, "SELECT count(*) FROM bills WHERE status = 'SENT'").await >= 50
    })
    .await;
    // Hold outcome writes back (inserts into the delivery history block), so the provider
    // delivers bills whose outcome is not yet durable, then kill: those are the bills a
    // restart re-sends and the provider must refuse as duplicates.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE delivery_attempts IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let recorded = count(&pool, "SELECT count(*) FROM bills WHERE status = 'SENT'").await as u64;
    eventually(60, "deliveries whose outcome is not yet recorded", || {
        let delivered = sim.stats().email.delivered;
        async move { delivered >= recorded + 20 }
    })
    .await;
    first.kill().await;
    blocker.rollback().await.unwrap();
    // Let requests the provider was still answering settle (killed connections end them).
    let mut last = sim.stats().email.delivered;
    let mut stable = 0;
    eventually(30, "provider counters settle", || {
        let now = sim.stats().email.delivered;
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        async move { stable >= 10 }
    })
    .await;
    let delivered_at_kill = sim.stats().email.delivered as i64;
    let recorded_at_kill = count(&pool, "SELECT count(*) FROM bills WHERE status = 'SENT'").await;
    let in_flight_at_kill =
        count(&pool, "SELECT count(*) FROM bills WHERE status = 'SENDING'").await;
    assert!(
        in_flight_at_kill > 0,
        "the kill should leave bills in flight"
    );

    let second = start(settings(&brokers, &topics, &sim, "crash", &extra), &pool).await;
    eventually(120, "every bill terminal", || async {
        count(
            &pool,
            "SELECT count(*) FROM bills WHERE status IN ('SENT', 'DEAD')",
        )
        .await
            == BILLS
    })
    .await;
    second.stop().await;
    relay.abort();

    // Assert
    eprintln!(
        "crash: delivered at kill {delivered_at_kill}, recorded {recorded_at_kill}, in flight {in_flight_at_kill}, refused re-sends {}",
        sim.stats().email.duplicates
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM bills WHERE status = 'SENT'").await,
        BILLS
    );
    let stats = sim.stats();
    assert_eq!(
        stats.email.delivered as i64, BILLS,
        "every recipient got the bill exactly once"
    );
    let mut keys: Vec<String> = sim.deliveries().into_iter().map(|d| d.key).collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "no idempotency key was delivered twice");
    assert_eq!(
        stats.email.duplicates as i64,
        delivered_at_kill - recorded_at_kill,
        "refused re-sends are exactly the bills delivered but not recorded before the kill"
    );
}
