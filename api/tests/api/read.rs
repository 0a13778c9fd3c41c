//! Reading: one bill (masked), its deliveries, the keyset-paginated list and the stats.

use crate::helpers::*;
use serde_json::json;
use sqlx::PgPool;

async fn create(app: &axum::Router, n: i64) -> String {
    let answer = send(app, post("/v1/bills", &bill(n))).await;
    assert_eq!(answer.status, 202, "{}", answer.raw);
    answer.body["id"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_bill_is_shown_with_its_recipient_masked(pool: PgPool) {
    let app = app(pool);
    let id = create(&app, 0).await;
    let answer = send(&app, get(&format!("/v1/bills/{id}"))).await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let b = &answer.body;
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["status"], "PENDING");
    assert_eq!(b["channel"], "email");
    assert_eq!(b["attempts"], 0);
    assert_eq!(b["replay_count"], 0);
    assert_eq!(b["total"], 56200);
    assert_eq!(
        b["items"],
        json!([{"name": "Mobile plan", "amount": 55000}, {"name": "Roaming", "amount": 1200}])
    );
    assert_eq!(b["recipient"]["email"], "k***@example.com");
    assert_eq!(b["recipient"]["phone"], "+********5432");
    assert_eq!(b["recipient"]["name"], "K** *****");
    assert!(b["created_at"].is_string());
    for secret in [NAME, "kim.minsu", "98765432"] {
        assert!(!answer.raw.contains(secret), "{secret} in {}", answer.raw);
    }
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn an_unknown_bill_is_a_404_problem_and_a_bad_id_a_400(pool: PgPool) {
    let app = app(pool);
    let unknown = uuid::Uuid::now_v7();
    send(&app, get(&format!("/v1/bills/{unknown}")))
        .await
        .problem(404);
    send(&app, get(&format!("/v1/bills/{unknown}/deliveries")))
        .await
        .problem(404);
    let bad = send(&app, get("/v1/bills/not-a-uuid")).await;
    bad.problem(400);
    assert_eq!(bad.error_fields(), vec!["id"]);
    send(&app, get("/v1/nowhere")).await.problem(404);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn deliveries_list_every_attempt_in_order(pool: PgPool) {
    let app = app(pool.clone());
    let id = create(&app, 0).await;
    let empty = send(&app, get(&format!("/v1/bills/{id}/deliveries"))).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body["deliveries"], json!([]));
    sqlx::query(
        "INSERT INTO delivery_attempts (bill_id, channel, attempt, replay_count, outcome, error, idempotency_key, started_at)
         VALUES ($1::uuid, 'email', 1, 0, 'FAILED', 'smtp 550', $1 || ':email:0', now()),
                ($1::uuid, 'sms', 2, 0, 'SENT', NULL, $1 || ':sms:0', now())",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let answer = send(&app, get(&format!("/v1/bills/{id}/deliveries"))).await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let d = answer.body["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["channel"], "email");
    assert_eq!(d[0]["outcome"], "FAILED");
    assert_eq!(d[0]["error"], "smtp 550");
    assert_eq!(d[1]["outcome"], "SENT");
    assert_eq!(d[1]["idempotency_key"], format!("{id}:sms:0").as_str());
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_list_pages_through_every_bill_newest_first_with_a_cursor(pool: PgPool) {
    let app = app(pool.clone());
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(create(&app, n).await);
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut uri = "/v1/bills?limit=3".to_owned();
    loop {
        let page = send(&app, get(&uri)).await;
        assert_eq!(page.status, 200, "{}", page.raw);
        for b in page.body["items"].as_array().unwrap() {
            seen.push(b["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/bills?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_list_filters_by_status(pool: PgPool) {
    let app = app(pool.clone());
    let dead = create(&app, 0).await;
    create(&app, 1).await;
    sqlx::query("UPDATE bills SET status = 'DEAD', dead_at = now() WHERE id = $1::uuid")
        .bind(&dead)
        .execute(&pool)
        .await
        .unwrap();
    let answer = send(&app, get("/v1/bills?status=DEAD")).await;
    let items = answer.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], dead.as_str());
    assert_eq!(
        send(&app, get("/v1/bills?status=pending")).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn bad_list_parameters_are_a_400_problem_naming_each(pool: PgPool) {
    let app = app(pool);
    let answer = send(&app, get("/v1/bills?status=LOST&limit=501&cursor=abc")).await;
    answer.problem(400);
    assert_eq!(answer.error_fields(), vec!["status", "limit", "cursor"]);
    send(&app, get("/v1/bills?limit=0")).await.problem(400);
    send(&app, get("/v1/bills?limit=ten")).await.problem(400);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn stats_count_bills_by_status_and_channel_and_the_outbox_backlog(pool: PgPool) {
    let app = app(pool.clone());
    for n in 0..3 {
        create(&app, n).await;
    }
    // The relay publishes the oldest row: it leaves the outbox.
    sqlx::query("DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox)")
        .execute(&pool)
        .await
        .unwrap();
    let answer = send(&app, get("/v1/stats")).await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let s = &answer.body;
    assert_eq!(s["bills"]["total"], 3);
    assert_eq!(s["bills"]["by_status"]["PENDING"], 3);
    assert_eq!(s["bills"]["by_status"]["DEAD"], 0);
    assert_eq!(s["bills"]["by_channel"]["email"], 3);
    assert_eq!(s["outbox"]["backlog"], 2);
    assert!(
        s["outbox"]["oldest_unpublished_age_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
}
