//! `/v1/admin/dead-letters`: bearer auth, listing with filters, replay one, replay by filter.

use crate::helpers::*;
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use billing_api::state::AppState;
use secrecy::SecretString;
use serde_json::{json, Value};
use shared::config::Topics;
use sqlx::PgPool;

const TOKEN: &str = "s3cret-admin-token";

fn admin_app(pool: PgPool, max_replays: i32) -> Router {
    let state = AppState::new(
        pool,
        keyring(),
        Topics::default(),
        Some(SecretString::from(TOKEN.to_owned())),
        max_replays,
    );
    billing_api::startup::router(state)
}

fn authed(method: &str, uri: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"));
    match body {
        Some(b) => builder
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

/// Creates a bill through the API and kills it on `channel` with `error`.
async fn dead_bill(app: &Router, pool: &PgPool, n: i64, channel: &str, error: &str) -> String {
    let answer = send(app, post("/v1/bills", &bill(n))).await;
    let id = answer.body["id"].as_str().unwrap().to_owned();
    sqlx::query(
        "UPDATE bills SET status = 'DEAD', channel = $2, attempts = 4, lease_expiries = 1,
                last_error = $3, dead_at = now() WHERE id = $1::uuid",
    )
    .bind(&id)
    .bind(channel)
    .bind(error)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn admin_endpoints_answer_503_when_no_token_is_configured(pool: PgPool) {
    let app = app(pool);
    let answer = send(&app, authed("GET", "/v1/admin/dead-letters", None)).await;
    answer.problem(503);
    assert!(answer.raw.contains("ADMIN_TOKEN"));
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn admin_endpoints_answer_401_without_or_with_a_wrong_token(pool: PgPool) {
    let app = admin_app(pool.clone(), 3);
    let id = dead_bill(&app, &pool, 1, "sms", "sms failed").await;
    let calls = [
        ("GET", "/v1/admin/dead-letters".to_owned(), None),
        (
            "POST",
            "/v1/admin/dead-letters/replay".to_owned(),
            Some(json!({})),
        ),
        ("POST", format!("/v1/admin/dead-letters/{id}/replay"), None),
    ];
    let wrong = [
        None,
        Some("Bearer s3cret-admin-tokeN"),
        Some("Bearer "),
        Some("Basic czNjcmV0LWFkbWluLXRva2Vu"),
        Some(TOKEN),
    ];
    for (method, uri, body) in &calls {
        for authorization in wrong {
            let mut req = Request::builder().method(*method).uri(uri.as_str());
            if let Some(a) = authorization {
                req = req.header("authorization", a);
            }
            let req = match body {
                Some(b) => req
                    .header("content-type", "application/json")
                    .body(Body::from(b.to_string())),
                None => req.body(Body::empty()),
            }
            .unwrap();
            let answer = send(&app, req).await;
            assert_eq!(answer.status, 401, "{method} {uri} with {authorization:?}");
            answer.problem(401);
        }
    }
    // Nothing was replayed by the refused calls.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM bills WHERE status = 'DEAD' AND replay_count = 0"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn dead_letters_are_listed_newest_first_with_filters_and_a_cursor(pool: PgPool) {
    let app = admin_app(pool.clone(), 3);
    let a = dead_bill(&app, &pool, 1, "sms", "sms: provider answered 500").await;
    let b = dead_bill(&app, &pool, 2, "email", "undecryptable recipient").await;
    let c = dead_bill(&app, &pool, 3, "sms", "SMS: Provider Timeout").await;
    send(&app, post("/v1/bills", &bill(4))).await; // alive, never listed

    let all = send(&app, authed("GET", "/v1/admin/dead-letters", None)).await;
    assert_eq!(all.status, 200, "{}", all.raw);
    let ids: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![c.as_str(), b.as_str(), a.as_str()]);

    let sms = send(
        &app,
        authed(
            "GET",
            "/v1/admin/dead-letters?channel=sms&reason=provider",
            None,
        ),
    )
    .await;
    let ids: Vec<&str> = sms.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![c.as_str(), a.as_str()]);

    let page1 = send(&app, authed("GET", "/v1/admin/dead-letters?limit=2", None)).await;
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = send(
        &app,
        authed(
            "GET",
            &format!("/v1/admin/dead-letters?limit=2&cursor={cursor}"),
            None,
        ),
    )
    .await;
    assert_eq!(page2.body["items"][0]["id"], a.as_str());
    assert!(page2.body["next_cursor"].is_null());

    let future = send(
        &app,
        authed(
            "GET",
            "/v1/admin/dead-letters?since=2999-01-01T00:00:00Z",
            None,
        ),
    )
    .await;
    assert_eq!(future.body["items"], json!([]));
    let past = send(
        &app,
        authed(
            "GET",
            "/v1/admin/dead-letters?until=2000-01-01T00:00:00Z",
            None,
        ),
    )
    .await;
    assert_eq!(past.body["items"], json!([]));

    let bad = send(
        &app,
        authed(
            "GET",
            "/v1/admin/dead-letters?since=yesterday&channel=fax",
            None,
        ),
    )
    .await;
    bad.problem(400);
    assert_eq!(bad.error_fields(), vec!["since", "channel"]);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn replaying_a_dead_bill_resets_it_and_writes_an_email_outbox_row_with_the_replay_count(
    pool: PgPool,
) {
    let app = admin_app(pool.clone(), 3);
    let id = dead_bill(&app, &pool, 1, "sms", "sms failed").await;
    let answer = send(
        &app,
        authed("POST", &format!("/v1/admin/dead-letters/{id}/replay"), None),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.raw);
    assert_eq!(answer.body["replay_count"], 1);

    let row: (
        String,
        String,
        i32,
        i32,
        i32,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT status, channel, replay_count, attempts, lease_expiries, last_error, dead_at
             FROM bills WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, ("PENDING".into(), "email".into(), 1, 0, 0, None, None));
    let (topic, payload): (String, Value) = sqlx::query_as(
        "SELECT topic, payload FROM outbox WHERE aggregateid = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(topic, "bills.email");
    assert_eq!(payload["replay_count"], 1);
    assert_eq!(payload["channel"], "email");
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 2);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn replaying_a_bill_that_is_not_dead_or_unknown_is_refused(pool: PgPool) {
    let app = admin_app(pool.clone(), 3);
    let alive = send(&app, post("/v1/bills", &bill(0))).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = send(
        &app,
        authed(
            "POST",
            &format!("/v1/admin/dead-letters/{alive}/replay"),
            None,
        ),
    )
    .await;
    answer.problem(409);
    assert!(answer.raw.contains("PENDING"));
    let unknown = uuid::Uuid::now_v7();
    send(
        &app,
        authed(
            "POST",
            &format!("/v1/admin/dead-letters/{unknown}/replay"),
            None,
        ),
    )
    .await
    .problem(404);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn replays_stop_at_the_per_bill_cap(pool: PgPool) {
    let app = admin_app(pool.clone(), 2);
    let id = dead_bill(&app, &pool, 1, "sms", "sms failed").await;
    for expected in 1..=2 {
        let answer = send(
            &app,
            authed("POST", &format!("/v1/admin/dead-letters/{id}/replay"), None),
        )
        .await;
        assert_eq!(answer.body["replay_count"], expected, "{}", answer.raw);
        sqlx::query("UPDATE bills SET status = 'DEAD', dead_at = now() WHERE id = $1::uuid")
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let capped = send(
        &app,
        authed("POST", &format!("/v1/admin/dead-letters/{id}/replay"), None),
    )
    .await;
    capped.problem(409);
    assert!(capped.raw.contains("MAX_REPLAYS = 2"), "{}", capped.raw);
    let bulk = send(
        &app,
        authed("POST", "/v1/admin/dead-letters/replay", Some(json!({}))),
    )
    .await;
    assert_eq!(bulk.body["matched"], 0, "{}", bulk.raw);
    assert_eq!(bulk.body["skipped_at_cap"], 1);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn replay_by_filter_honours_dry_run_limit_and_filter(pool: PgPool) {
    let app = admin_app(pool.clone(), 3);
    let a = dead_bill(&app, &pool, 1, "sms", "sms: provider 500").await;
    let b = dead_bill(&app, &pool, 2, "sms", "sms: provider 500").await;
    let _other = dead_bill(&app, &pool, 3, "email", "undecryptable").await;

    let dry = send(
        &app,
        authed(
            "POST",
            "/v1/admin/dead-letters/replay",
            Some(json!({"filter": {"reason": "PROVIDER"}, "dry_run": true})),
        ),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.raw);
    assert_eq!(dry.body["matched"], 2);
    assert_eq!(dry.body["replayed"], 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM bills WHERE status = 'DEAD'").await,
        3
    );
    // A dry run writes nothing: no replay counted, no outbox row.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM bills WHERE replay_count > 0").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 3);

    let one = send(
        &app,
        authed(
            "POST",
            "/v1/admin/dead-letters/replay",
            Some(json!({"filter": {"channel": "sms"}, "limit": 1})),
        ),
    )
    .await;
    assert_eq!(one.status, 202, "{}", one.raw);
    assert_eq!(one.body["ids"], json!([a]));
    let rest = send(
        &app,
        authed(
            "POST",
            "/v1/admin/dead-letters/replay",
            Some(json!({"filter": {"channel": "sms"}})),
        ),
    )
    .await;
    assert_eq!(rest.body["ids"], json!([b]));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM bills WHERE status = 'DEAD'").await,
        1
    );

    send(
        &app,
        authed(
            "POST",
            "/v1/admin/dead-letters/replay",
            Some(json!({"limit": 0})),
        ),
    )
    .await
    .problem(422);
    send(
        &app,
        authed(
            "POST",
            "/v1/admin/dead-letters/replay",
            Some(json!({"bogus": 1})),
        ),
    )
    .await
    .problem(422);
    // Postgres text cannot hold NUL: refused as bad input, never a 500.
    let nul = json!({"filter": {"reason": "a\u{0}b"}});
    send(
        &app,
        authed("POST", "/v1/admin/dead-letters/replay", Some(nul)),
    )
    .await
    .problem(422);
    send(
        &app,
        authed("GET", "/v1/admin/dead-letters?reason=a%00b", None),
    )
    .await
    .problem(400);
}
