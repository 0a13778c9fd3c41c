//! `POST /v1/bills/batch`: all or nothing, per-item errors with their index, idempotency.

use crate::helpers::*;
use serde_json::{json, Value};
use sqlx::PgPool;

fn batch(n: usize) -> Value {
    json!({ "bills": (0..n).map(|i| bill(i as i64)).collect::<Vec<_>>() })
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_batch_is_stored_with_every_item_and_outbox_row(pool: PgPool) {
    let app = app(pool.clone());
    let answer = send(&app, post("/v1/bills/batch", &batch(250))).await;
    assert_eq!(answer.status, 202, "{}", answer.raw);
    assert_eq!(answer.body["accepted"], 250);
    let bills = answer.body["bills"].as_array().unwrap();
    assert_eq!(bills.len(), 250);
    assert_eq!(bills[7]["index"], 7);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 250);
    assert_eq!(count(&pool, "SELECT count(*) FROM bill_items").await, 500);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox o JOIN bills b ON b.id::text = o.aggregateid"
        )
        .await,
        250
    );
    let total: i64 = sqlx::query_scalar("SELECT total_minor FROM bills WHERE id = $1::uuid")
        .bind(bills[7]["id"].as_str().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 55000 + 7 + 1200);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn one_bad_item_rolls_back_the_whole_batch_and_is_reported_with_its_index(pool: PgPool) {
    let app = app(pool.clone());
    let mut body = batch(10);
    body["bills"][7]["recipient"]["phone"] = json!("12");
    body["bills"][3]["items"][0]["amount"] = json!(-5);
    let answer = send(&app, post("/v1/bills/batch", &body)).await;
    answer.problem(422);
    let errors = answer.body["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "bills[7].recipient.phone" && e["index"] == 7),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "bills[3].items[0].amount" && e["index"] == 3),
        "{errors:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_batch_must_hold_1_to_1000_bills(pool: PgPool) {
    let app = app(pool.clone());
    send(&app, post("/v1/bills/batch", &json!({"bills": []})))
        .await
        .problem(422);
    send(&app, post("/v1/bills/batch", &batch(1001)))
        .await
        .problem(422);
    send(&app, post("/v1/bills/batch", &json!([bill(0)])))
        .await
        .problem(422);
    let full = send(&app, post("/v1/bills/batch", &batch(1000))).await;
    assert_eq!(full.status, 202, "{}", full.raw);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 1000);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_repeated_batch_with_the_same_key_replays_the_same_ids(pool: PgPool) {
    let app = app(pool.clone());
    let first = send(&app, post_with_key("/v1/bills/batch", "run-1", &batch(5))).await;
    let again = send(&app, post_with_key("/v1/bills/batch", "run-1", &batch(5))).await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202, "{}", again.raw);
    assert_eq!(again.body["replayed"], 5);
    assert_eq!(again.body["accepted"], 0);
    for i in 0..5 {
        assert_eq!(first.body["bills"][i]["id"], again.body["bills"][i]["id"]);
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 5);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 5);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_batch_reusing_keys_with_other_bodies_is_a_409_naming_the_indexes_and_writes_nothing(
    pool: PgPool,
) {
    let app = app(pool.clone());
    assert_eq!(
        send(&app, post_with_key("/v1/bills/batch", "run-1", &batch(3)))
            .await
            .status,
        202
    );
    let mut changed = batch(6);
    changed["bills"][1]["currency"] = json!("USD");
    let answer = send(&app, post_with_key("/v1/bills/batch", "run-1", &changed)).await;
    answer.problem(409);
    let indexes: Vec<i64> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, vec![1]);
    // Bills 3..5 were new, but the batch is all or nothing.
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 3);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn batch_items_use_their_external_ids_as_keys_and_may_not_repeat_them(pool: PgPool) {
    let app = app(pool.clone());
    let mut body = batch(3);
    for i in 0..3 {
        body["bills"][i]["external_id"] = json!(format!("INV-{i}"));
    }
    assert_eq!(send(&app, post("/v1/bills/batch", &body)).await.status, 202);
    let replay = send(&app, post("/v1/bills/batch", &body)).await;
    assert_eq!(replay.body["replayed"], 3, "{}", replay.raw);

    let mut dup = batch(2);
    dup["bills"][0]["external_id"] = json!("SAME");
    dup["bills"][1]["external_id"] = json!("SAME");
    let answer = send(&app, post("/v1/bills/batch", &dup)).await;
    answer.problem(422);
    assert_eq!(answer.error_fields(), vec!["bills[1].external_id"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 3);
}
