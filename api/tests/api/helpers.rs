//! Building the app for a test database and sending requests to it.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use billing_api::state::AppState;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::config::Topics;
use shared::crypto::Keyring;
use sqlx::PgPool;
use tower::ServiceExt;

pub const NAME: &str = "Kim Minsu";
pub const EMAIL: &str = "kim.minsu@example.com";
pub const PHONE: &str = "010-9876-5432";
/// The phone in the forms it could be stored in, to prove none of them is.
pub const PHONE_FORMS: [&str; 3] = ["010-9876-5432", "01098765432", "821098765432"];

pub fn keyring() -> Keyring {
    Keyring::parse(&Keyring::generate_spec("test")).expect("a generated keyring parses")
}

pub fn state(pool: PgPool) -> AppState {
    AppState::new(pool, keyring(), Topics::default(), None, 3)
}

pub fn app(pool: PgPool) -> Router {
    billing_api::startup::router(state(pool))
}

/// A valid bill; `n` varies the amount so bodies differ.
pub fn bill(n: i64) -> Value {
    json!({
        "recipient": {"name": NAME, "email": EMAIL, "phone": PHONE},
        "billing_period": "2026-11",
        "due_date": "2026-12-10",
        "currency": "KRW",
        "items": [{"name": "Mobile plan", "amount": 55000 + n}, {"name": "Roaming", "amount": 1200}]
    })
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Answer {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json answer with this status and returns the problem.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.raw);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "{}",
            self.raw
        );
        assert_eq!(self.body["status"], status, "{}", self.raw);
        assert!(
            self.body["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{}",
            self.raw
        );
        assert!(self.body["title"].is_string(), "{}", self.raw);
        &self.body
    }

    /// The `field` of every entry of a problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(req)
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        raw,
    }
}

pub fn post(uri: &str, body: &Value) -> Request<Body> {
    post_raw(uri, "application/json", body.to_string())
}

pub fn post_with_key(uri: &str, key: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .expect("request")
}

pub fn post_raw(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", content_type)
        .body(body.into())
        .expect("request")
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query")
}
