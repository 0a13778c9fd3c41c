//! Claims, fencing and the sweeper against real Postgres, driven through the library.

mod common;

use billing_consumer::claim::{claim_batch, ClaimRequest, ClaimResult, ClaimedBill};
use billing_consumer::outcome::{write_batch, Attempt, Finished, Outcome, Written};
use billing_consumer::sweeper::{sweep_once, SweepReport};
use chrono::Utc;
use common::*;
use shared::config::Topics;
use shared::domain::Channel;
use shared::events::SourceRecord;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

fn req(id: Uuid, channel: Channel) -> ClaimRequest {
    ClaimRequest {
        bill_id: id,
        channel,
    }
}

async fn claim_one(pool: &PgPool, id: Uuid, channel: Channel) -> Option<ClaimedBill> {
    match claim_batch(pool, &[req(id, channel)], LEASE)
        .await
        .unwrap()
        .remove(0)
    {
        ClaimResult::Claimed(b) => Some(*b),
        _ => None,
    }
}

fn finished(outcome: Outcome) -> Finished {
    Finished {
        source: SourceRecord {
            topic: "bills.email".into(),
            partition: 0,
            offset: 7,
        },
        outcome,
    }
}

async fn expire_leases(pool: &PgPool) {
    sqlx::query(
        "UPDATE bills SET lease_until = now() - interval '1 second' WHERE status = 'SENDING'",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_claim_takes_only_pending_bills_on_the_records_channel_and_each_bill_once(pool: PgPool) {
    let topics = Topics::default();
    let a = enqueue(&pool, &topics, "Kim", "kim@example.kr", "+821012345678").await;
    let b = enqueue(&pool, &topics, "Lee", "lee@example.kr", "+821012345679").await;
    let unknown = Uuid::now_v7();

    let results = claim_batch(
        &pool,
        &[
            req(a, Channel::Email),
            req(a, Channel::Email),
            req(b, Channel::Sms),
            req(unknown, Channel::Email),
        ],
        LEASE,
    )
    .await
    .unwrap();

    assert!(
        matches!(&results[0], ClaimResult::Claimed(bill) if bill.id == a && bill.attempts == 1 && bill.items.len() == 2)
    );
    assert!(
        matches!(results[1], ClaimResult::Skipped),
        "a duplicate in the same batch is skipped"
    );
    assert!(
        matches!(results[2], ClaimResult::Skipped),
        "b is pending on email, not sms"
    );
    assert!(matches!(results[3], ClaimResult::UnknownBill));
    assert!(
        claim_one(&pool, a, Channel::Email).await.is_none(),
        "a SENDING bill cannot be claimed again"
    );
    assert_eq!(status(&pool, a).await.0, "SENDING");
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_stalled_worker_whose_lease_was_reclaimed_cannot_overwrite_the_new_outcome(pool: PgPool) {
    let topics = Topics::default();
    let id = enqueue(&pool, &topics, "Kim", "kim@example.kr", "+821012345678").await;
    let stalled = claim_one(&pool, id, Channel::Email).await.unwrap();

    // The stalled worker's lease expires and the sweeper hands the bill back.
    expire_leases(&pool).await;
    let report = sweep_once(&pool, &topics, 3).await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            requeued: 1,
            moved: 0,
            dead: 0
        }
    );
    assert_eq!(status(&pool, id).await, ("PENDING".into(), "email".into()));
    // A new worker claims it from the re-published record and sends it.
    let fresh = claim_one(&pool, id, Channel::Email).await.unwrap();
    assert_ne!(fresh.token, stalled.token);
    let w = write_batch(
        &pool,
        &topics,
        &[finished(Outcome::Sent {
            attempt: Attempt::of(&fresh, Utc::now()),
        })],
    )
    .await
    .unwrap();
    assert_eq!(w, vec![Written::Sent]);

    // The stalled worker wakes up with a failure, and with a success: neither changes anything.
    let late_failure = Outcome::Failed {
        attempt: Attempt::of(&stalled, Utc::now()),
        error: "email: timeout".into(),
    };
    let late_success = Outcome::Sent {
        attempt: Attempt::of(&stalled, Utc::now()),
    };
    let w = write_batch(
        &pool,
        &topics,
        &[finished(late_failure), finished(late_success)],
    )
    .await
    .unwrap();
    assert_eq!(w, vec![Written::Fenced, Written::Fenced]);

    assert_eq!(status(&pool, id).await, ("SENT".into(), "email".into()));
    let history: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM delivery_attempts WHERE bill_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(history, vec!["EXPIRED", "SENT"]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox_events WHERE type = 'bill.sms_requested'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox_events WHERE type = 'bill.email_requested'"
        )
        .await,
        2,
        "the original and the sweeper's re-publish"
    );
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_bill_whose_lease_keeps_expiring_moves_to_sms_and_then_dies(pool: PgPool) {
    let topics = Topics::default();
    let id = enqueue(&pool, &topics, "Kim", "kim@example.kr", "+821012345678").await;
    let mut reports = Vec::new();
    for channel in [Channel::Email, Channel::Email, Channel::Sms, Channel::Sms] {
        claim_one(&pool, id, channel)
            .await
            .expect("claimable on the expected channel");
        expire_leases(&pool).await;
        reports.push(sweep_once(&pool, &topics, 2).await.unwrap());
    }
    assert_eq!(
        reports,
        vec![
            SweepReport {
                requeued: 1,
                moved: 0,
                dead: 0
            },
            SweepReport {
                requeued: 0,
                moved: 1,
                dead: 0
            },
            SweepReport {
                requeued: 1,
                moved: 0,
                dead: 0
            },
            SweepReport {
                requeued: 0,
                moved: 0,
                dead: 1
            },
        ]
    );
    assert_eq!(status(&pool, id).await.0, "DEAD");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM delivery_attempts WHERE outcome = 'EXPIRED'"
        )
        .await,
        4
    );
    let dlt = dead_letters(&pool, &topics).await;
    assert_eq!(dlt.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&dlt[0]).unwrap();
    assert_eq!(v["dead_letter"]["reason"], "lease_expired");
    assert_eq!(v["dead_letter"]["attempts"], 4);
}
