//! `POST /v1/bills`: acceptance, the outbox row, encryption at rest, every error class and
//! idempotency.

use crate::helpers::*;
use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn an_accepted_bill_is_stored_with_its_items_and_one_outbox_row(pool: PgPool) {
    let app = app(pool.clone());
    let answer = send(&app, post("/v1/bills", &bill(0))).await;

    assert_eq!(answer.status, 202, "{}", answer.raw);
    let id = answer.body["id"].as_str().expect("id").to_owned();
    assert_eq!(answer.body["status"], "PENDING");
    assert_eq!(answer.body["channel"], "email");
    assert_eq!(
        answer.headers["location"],
        format!("/v1/bills/{id}").as_str()
    );
    assert_eq!(answer.body["location"], format!("/v1/bills/{id}").as_str());
    assert!(answer.headers.contains_key("x-request-id"));

    let (total, status): (i64, String) =
        sqlx::query_as("SELECT total_minor, status FROM bills WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((total, status.as_str()), (56200, "PENDING"));
    assert_eq!(count(&pool, "SELECT count(*) FROM bill_items").await, 2);
    let (topic, aggregate, kind, payload, headers): (String, String, String, Value, Value) =
        sqlx::query_as("SELECT topic, aggregateid, type, payload, headers FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(topic, "bills.email");
    assert_eq!(aggregate, id);
    assert_eq!(kind, "bill.email_requested");
    assert_eq!(payload["bill_id"], id.as_str());
    assert_eq!(payload["channel"], "email");
    assert_eq!(headers["event_type"], "bill.email_requested");
    assert_eq!(headers["event_id"], payload["event_id"]);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn no_plaintext_name_email_or_phone_is_stored_anywhere(pool: PgPool) {
    let app = app(pool.clone());
    assert_eq!(send(&app, post("/v1/bills", &bill(0))).await.status, 202);
    assert_eq!(
        send(
            &app,
            post("/v1/bills/batch", &json!({"bills": [bill(1), bill(2)]}))
        )
        .await
        .status,
        202
    );

    let dump: String = sqlx::query_scalar(
        "SELECT (SELECT string_agg(row_to_json(b)::text, ' ') FROM bills b)
             || (SELECT string_agg(row_to_json(o)::text, ' ') FROM outbox o)
             || (SELECT string_agg(row_to_json(i)::text, ' ') FROM bill_items i)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for secret in [NAME, "Minsu", EMAIL, "kim.minsu", "example.com"]
        .iter()
        .chain(PHONE_FORMS.iter())
    {
        assert!(
            !dump.contains(secret),
            "plaintext {secret:?} found in the database"
        );
    }
    let ciphertexts: Vec<(String, String, String)> =
        sqlx::query_as("SELECT recipient_name, recipient_email, recipient_phone FROM bills")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(ciphertexts.len(), 3);
    assert!(ciphertexts
        .iter()
        .all(|(n, e, p)| [n, e, p].iter().all(|c| c.starts_with("test:"))));
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn an_incoming_traceparent_is_continued_and_stored_with_the_bill_and_outbox_row(
    pool: PgPool,
) {
    let app = app(pool.clone());
    let req = Request::post("/v1/bills")
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::from(bill(0).to_string()))
        .unwrap();
    let answer = send(&app, req).await;
    assert_eq!(answer.status, 202);
    let tp = answer.headers["traceparent"].to_str().unwrap().to_owned();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );

    let stored: String = sqlx::query_scalar("SELECT traceparent FROM bills")
        .fetch_one(&pool)
        .await
        .unwrap();
    let header: String = sqlx::query_scalar("SELECT headers->>'traceparent' FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, tp);
    assert_eq!(header, tp);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn malformed_json_is_a_400_problem(pool: PgPool) {
    let app = app(pool.clone());
    for body in ["{", "{\"recipient\": }", "", "not json"] {
        let answer = send(&app, post_raw("/v1/bills", "application/json", body)).await;
        answer.problem(400);
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 0);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn missing_fields_are_all_listed_in_one_422_problem(pool: PgPool) {
    let app = app(pool);
    let answer = send(&app, post("/v1/bills", &json!({}))).await;
    answer.problem(422);
    let fields = answer.error_fields();
    for f in [
        "recipient",
        "billing_period",
        "due_date",
        "currency",
        "items",
    ] {
        assert!(fields.contains(&f.to_owned()), "{f} not in {fields:?}");
    }
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn wrong_types_and_invalid_values_are_listed_with_their_paths_without_echoing_them(
    pool: PgPool,
) {
    let app = app(pool.clone());
    let mut body = bill(0);
    body["recipient"]["email"] = json!("kim.minsu-at-example.com");
    body["recipient"]["phone"] = json!(1234);
    body["billing_period"] = json!("2026-13");
    body["due_date"] = json!(20261210);
    body["currency"] = json!("won");
    body["items"][1]["amount"] = json!("1200");
    body["items"][0]["name"] = json!("");
    let answer = send(&app, post("/v1/bills", &body)).await;
    answer.problem(422);
    let fields = answer.error_fields();
    for f in [
        "recipient.email",
        "recipient.phone",
        "billing_period",
        "due_date",
        "currency",
        "items[1].amount",
        "items[0].name",
    ] {
        assert!(fields.contains(&f.to_owned()), "{f} not in {fields:?}");
    }
    assert!(answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["pointer"] == "/items/1/amount"));
    assert!(
        !answer.raw.contains("kim.minsu"),
        "the problem echoes the email: {}",
        answer.raw
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 0);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn item_counts_outside_1_to_100_are_rejected(pool: PgPool) {
    let app = app(pool);
    let mut none = bill(0);
    none["items"] = json!([]);
    assert_eq!(
        send(&app, post("/v1/bills", &none)).await.error_fields(),
        vec!["items"]
    );
    let mut many = bill(0);
    many["items"] = Value::Array(
        (0..101)
            .map(|i| json!({"name": format!("i{i}"), "amount": 1}))
            .collect(),
    );
    send(&app, post("/v1/bills", &many)).await.problem(422);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_body_that_is_not_json_by_content_type_is_a_415_problem(pool: PgPool) {
    let app = app(pool.clone());
    send(
        &app,
        post_raw("/v1/bills", "text/plain", bill(0).to_string()),
    )
    .await
    .problem(415);
    let no_type = Request::post("/v1/bills")
        .body(Body::from(bill(0).to_string()))
        .unwrap();
    send(&app, no_type).await.problem(415);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 0);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn an_oversized_body_is_a_413_problem(pool: PgPool) {
    let app = app(pool);
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    send(
        &app,
        post_raw("/v1/bills", "application/json", huge.clone()),
    )
    .await
    .problem(413);
    // Without a Content-Length the limit applies while the body streams in.
    let stream = Body::from_stream(futures::stream::iter(
        huge.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    ));
    send(
        &app,
        post_raw("/v1/bills/batch", "application/json", stream),
    )
    .await
    .problem(413);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_same_key_and_body_replays_the_first_answer(pool: PgPool) {
    let app = app(pool.clone());
    let first = send(&app, post_with_key("/v1/bills", "order-42", &bill(0))).await;
    let second = send(&app, post_with_key("/v1/bills", "order-42", &bill(0))).await;
    assert_eq!(first.status, 202);
    assert_eq!(second.status, 202);
    assert_eq!(first.body, second.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_same_key_with_another_body_is_a_409_problem(pool: PgPool) {
    let app = app(pool.clone());
    assert_eq!(
        send(&app, post_with_key("/v1/bills", "order-42", &bill(0)))
            .await
            .status,
        202
    );
    send(&app, post_with_key("/v1/bills", "order-42", &bill(1)))
        .await
        .problem(409);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 1);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn external_id_is_the_key_when_no_header_is_sent(pool: PgPool) {
    let app = app(pool.clone());
    let mut a = bill(0);
    a["external_id"] = json!("INV-2026-11-0001");
    let first = send(&app, post("/v1/bills", &a)).await;
    let again = send(&app, post("/v1/bills", &a)).await;
    assert_eq!(first.body["id"], again.body["id"]);
    let mut changed = a.clone();
    changed["items"][0]["amount"] = json!(1);
    send(&app, post("/v1/bills", &changed)).await.problem(409);
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 1);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_bad_idempotency_key_header_is_a_400_problem(pool: PgPool) {
    let app = app(pool);
    let long = "k".repeat(201);
    send(&app, post_with_key("/v1/bills", &long, &bill(0)))
        .await
        .problem(400);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn concurrent_requests_with_one_key_create_one_bill(pool: PgPool) {
    let app = app(pool.clone());
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                send(&app, post_with_key("/v1/bills", "same-key", &bill(0))).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let answer = t.await.unwrap();
        assert_eq!(answer.status, 202, "{}", answer.raw);
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM bill_items").await, 2);
}

/// One writer and many concurrent requests: the requests that wait while it writes are
/// committed together (group commit), each still answered for itself: new bills with their
/// own ids, repeats of a key with the first bill, a key reused with another body with 409.
#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn bills_committed_together_are_answered_one_by_one(pool: PgPool) {
    let app = billing_api::startup::router(state(pool.clone()).with_writers(1, 64));
    let tasks: Vec<_> = (0..60)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let answer = match n % 3 {
                    0 => send(&app, post("/v1/bills", &bill(n))).await,
                    1 => send(&app, post_with_key("/v1/bills", "shared", &bill(1))).await,
                    _ if n == 2 => send(&app, post_with_key("/v1/bills", "shared", &bill(2))).await,
                    _ => {
                        send(
                            &app,
                            post_with_key("/v1/bills", &format!("own-{n}"), &bill(n)),
                        )
                        .await
                    }
                };
                (n, answer)
            })
        })
        .collect();
    // "shared" is sent 20 times with one body and once (n = 2) with another: whichever body
    // is written first owns the key, and every request with the other body is a 409.
    let mut fresh = std::collections::HashSet::new();
    let (mut shared_ids, mut shared_conflicts, mut other_body) = (Vec::new(), 0, 0);
    for task in tasks {
        let (n, answer) = task.await.unwrap();
        if n == 2 {
            other_body = answer.status.as_u16();
            continue;
        }
        if n % 3 == 1 && answer.status == 409 {
            answer.problem(409);
            shared_conflicts += 1;
            continue;
        }
        assert_eq!(answer.status, 202, "{}", answer.raw);
        let id = answer.body["id"].as_str().unwrap().to_owned();
        if n % 3 == 1 {
            shared_ids.push(id);
        } else {
            assert!(fresh.insert(id), "two requests answered with one id");
        }
    }
    shared_ids.dedup();
    match other_body {
        409 => assert_eq!((shared_ids.len(), shared_conflicts), (1, 0)),
        202 => assert_eq!((shared_ids.len(), shared_conflicts), (0, 20)),
        other => panic!("the other body under the shared key was answered {other}"),
    }
    // 20 unkeyed + 19 with their own key, and one bill for "shared" whichever body won.
    assert_eq!(fresh.len(), 39);
    assert!(shared_ids.len() <= 1, "{shared_ids:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM bills").await, 40);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 40);
    assert_eq!(count(&pool, "SELECT count(*) FROM bill_items").await, 80);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM bills WHERE idempotency_key = 'shared'"
        )
        .await,
        1
    );
    // Bills written by one statement share its transaction id.
    let transactions = count(&pool, "SELECT count(DISTINCT xmin::text) FROM bills").await;
    assert!(transactions < 40, "no two bills were committed together");
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn nul_characters_in_any_text_field_are_a_422_never_a_500(pool: PgPool) {
    let app = app(pool);
    for path in [
        &["recipient", "name"][..],
        &["recipient", "email"],
        &["recipient", "phone"],
        &["billing_period"],
        &["currency"],
        &["external_id"],
    ] {
        let mut body = bill(0);
        let mut slot = &mut body;
        for key in path {
            slot = &mut slot[*key];
        }
        *slot = json!("a\u{0}b");
        send(&app, post("/v1/bills", &body)).await.problem(422);
    }
    let mut item = bill(0);
    item["items"][0]["name"] = json!("a\u{0}b");
    send(&app, post("/v1/bills", &item)).await.problem(422);
}
