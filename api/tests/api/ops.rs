//! Health, readiness, metrics, Swagger UI, and behaviour when Postgres is down.

use crate::helpers::*;
use axum::body::Body;
use axum::http::Request;
use billing_api::state::AppState;
use shared::config::Topics;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::Duration;

/// An app whose pool points at a port nobody listens on.
fn app_without_database() -> axum::Router {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/billing")
        .expect("a lazy pool never connects up front");
    billing_api::startup::router(AppState::new(pool, keyring(), Topics::default(), None, 3))
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn health_and_readiness_answer_when_postgres_is_up(pool: PgPool) {
    let app = app(pool);
    assert_eq!(send(&app, get("/healthz")).await.status, 200);
    let ready = send(&app, get("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
}

#[tokio::test]
async fn every_database_endpoint_answers_503_when_postgres_is_down() {
    let app = app_without_database();
    assert_eq!(send(&app, get("/healthz")).await.status, 200);
    send(&app, get("/readyz")).await.problem(503);
    let answer = send(&app, post("/v1/bills", &bill(0))).await;
    answer.problem(503);
    assert!(answer.headers.contains_key("retry-after"));
    send(
        &app,
        post("/v1/bills/batch", &serde_json::json!({"bills": [bill(0)]})),
    )
    .await
    .problem(503);
    let id = uuid::Uuid::now_v7();
    send(&app, get(&format!("/v1/bills/{id}")))
        .await
        .problem(503);
    send(&app, get(&format!("/v1/bills/{id}/deliveries")))
        .await
        .problem(503);
    send(&app, get("/v1/bills")).await.problem(503);
    send(&app, get("/v1/stats")).await.problem(503);
}

#[tokio::test]
async fn bad_input_is_rejected_before_the_database_is_needed() {
    let app = app_without_database();
    send(&app, post_raw("/v1/bills", "application/json", "{"))
        .await
        .problem(400);
    send(&app, post("/v1/bills", &serde_json::json!({})))
        .await
        .problem(422);
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn metrics_count_requests_by_route_and_accepted_bills(pool: PgPool) {
    let app = app(pool);
    assert_eq!(send(&app, post("/v1/bills", &bill(0))).await.status, 202);
    let answer = send(&app, get("/metrics")).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.raw.contains("billing_api_requests_total"),
        "{}",
        answer.raw
    );
    assert!(answer.raw.contains("route=\"/v1/bills\""), "{}", answer.raw);
    assert!(
        answer.raw.contains("billing_api_bills_accepted_total"),
        "{}",
        answer.raw
    );
    assert!(
        answer.raw.contains("billing_api_request_duration_seconds"),
        "{}",
        answer.raw
    );
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_request_id_is_generated_or_propagated(pool: PgPool) {
    let app = app(pool);
    let fresh = send(&app, get("/healthz")).await;
    assert!(fresh.headers.contains_key("x-request-id"));
    let req = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.headers["x-request-id"], "abc-123");
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn swagger_ui_and_the_openapi_document_are_served(pool: PgPool) {
    let app = app(pool);
    let ui = send(&app, get("/swagger-ui/")).await;
    assert_eq!(ui.status, 200);
    assert!(ui.raw.contains("swagger-ui"), "{}", ui.raw);
    let doc = send(&app, get("/api-docs/openapi.json")).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/v1/bills"].is_object());
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_wrong_method_is_a_405_problem(pool: PgPool) {
    let app = app(pool);
    let req = Request::delete("/v1/bills").body(Body::empty()).unwrap();
    let answer = send(&app, req).await;
    answer.problem(405);
    assert!(answer.headers.contains_key("allow"));
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_application_serves_on_port_0_and_stops_gracefully_when_cancelled(
    _pool_options: PgPoolOptions,
    options: sqlx::postgres::PgConnectOptions,
) {
    use clap::Parser;
    let db = options.get_database().unwrap_or("postgres").to_owned();
    let url = format!(
        "postgres://{}@{}:{}/{db}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    let spec = shared::crypto::Keyring::generate_spec("k1");
    let cli = billing_api::settings::Cli::try_parse_from([
        "billing-api",
        "--api-addr",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--encryption-keys",
        &spec,
        "--migrate",
    ])
    .unwrap();
    let app = billing_api::startup::Application::build(cli.settings)
        .await
        .unwrap();
    let port = app.port();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(cancel.clone()));

    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after cancellation")
        .unwrap()
        .unwrap();
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err());
}

#[tokio::test]
async fn the_application_refuses_to_start_without_a_keyring() {
    use clap::Parser;
    if std::env::var_os("BILLING_ENCRYPTION_KEYS").is_some() {
        return; // the environment provides one; nothing to check here
    }
    let cli =
        billing_api::settings::Cli::try_parse_from(["billing-api", "--api-addr", "127.0.0.1:0"])
            .unwrap();
    let err = billing_api::startup::Application::build(cli.settings)
        .await
        .err()
        .expect("no keyring");
    assert!(
        format!("{err:#}").contains("BILLING_ENCRYPTION_KEYS"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_is_a_503_problem() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy("postgres://postgres@127.0.0.1:1/billing")
        .expect("a lazy pool never connects up front");
    let state = AppState::new(pool, keyring(), Topics::default(), None, 3);
    let config = billing_api::startup::RouterConfig {
        request_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let app = billing_api::startup::router_with(state, config);
    let answer = send(&app, get("/v1/stats")).await;
    answer.problem(503);
    assert!(
        answer.body["type"].as_str().unwrap().ends_with("/timeout"),
        "{}",
        answer.raw
    );
}

/// A single-bill writer keeps its connection between bills; when Postgres kills it (restart,
/// failover, `pg_terminate_backend`) at most the next bill is refused with a 503, whose
/// client retries, and the writer carries on with a fresh connection.
#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn a_writer_whose_connection_was_killed_recovers_on_the_next_bill(pool: PgPool) {
    let app = billing_api::startup::router(state(pool.clone()).with_writers(1, 1));
    assert_eq!(send(&app, post("/v1/bills", &bill(0))).await.status, 202);
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the writer's connection was not found");
    let mut refused = 0;
    let mut accepted = 0;
    for n in 1..=3 {
        let answer = send(&app, post("/v1/bills", &bill(n))).await;
        match answer.status.as_u16() {
            202 => accepted += 1,
            503 => {
                answer.problem(503);
                refused += 1;
            }
            other => panic!("answered {other}: {}", answer.raw),
        }
    }
    assert!(
        refused <= 1,
        "{refused} bills refused after one lost connection"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM bills").await,
        1 + accepted
    );
}
