//! HTTP surface: `POST /v1/email`, `POST /v1/sms`, `GET /stats`, `GET /v1/deliveries`,
//! `POST /reset`, `GET /healthz`.
//!
//! Bodies are parsed by hand from bytes so that every request is counted and malformed input
//! gets the same `{"error": ...}` envelope (4xx, never 5xx). Recipients and bodies are never
//! logged; idempotency keys only at debug level.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::{Channel, Delivery, ForcedFailure, Outcome, Stats, Store};

/// Header carrying the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 200;

/// Shared handler state.
pub type AppState = Arc<Store>;

/// The provider's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/email", post(send_email))
        .route("/v1/sms", post(send_sms))
        .route("/v1/deliveries", get(deliveries))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// `POST /v1/email` body.
#[derive(Debug, Deserialize)]
pub struct EmailRequest {
    pub to: String,
    pub subject: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// `POST /v1/sms` body.
#[derive(Debug, Deserialize)]
pub struct SmsRequest {
    pub to: String,
    pub text: String,
}

/// Successful answer of a channel send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub message_id: String,
    /// `true` when the key had already been delivered and nothing was sent again.
    pub duplicate: bool,
}

/// A refused request: rendered as `{"error": message}` with `status`.
#[derive(Debug)]
pub struct SimError {
    status: StatusCode,
    message: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> SimError {
    SimError {
        status,
        message: message.into(),
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, SimError> {
    let bad = |msg: &str| Err(error(StatusCode::BAD_REQUEST, msg));
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return bad("missing Idempotency-Key header");
    };
    let Ok(key) = value.to_str() else {
        return bad("Idempotency-Key must be visible ASCII");
    };
    let key = key.trim();
    if key.is_empty() {
        return bad("Idempotency-Key must not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("Idempotency-Key must be at most 200 characters");
    }
    Ok(key.to_owned())
}

/// Syntax errors are 400, well-formed JSON of the wrong shape is 422. serde's messages name
/// fields and types, never values, so they are safe to return.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        error(status, format!("invalid JSON body: {e}"))
    })
}

/// A well-formed body whose content is unusable: 422.
fn invalid(message: &'static str) -> Result<Response, SimError> {
    Err(error(StatusCode::UNPROCESSABLE_ENTITY, message))
}

fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

async fn send_email(
    State(store): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SimError> {
    store.count_request(Channel::Email);
    let key = idempotency_key(&headers)?;
    let req: EmailRequest = parse(&body)?;
    if is_blank(&req.to) || !req.to.contains('@') {
        return invalid("`to` must be an email address");
    }
    if is_blank(&req.subject) {
        return invalid("`subject` must not be empty");
    }
    if req.html.as_deref().is_none_or(is_blank) && req.text.as_deref().is_none_or(is_blank) {
        return invalid("one of `html` or `text` is required");
    }
    let forced = if email_bounces(&req.to) {
        ForcedFailure::Rejected("mailbox unavailable (simulated bounce)")
    } else {
        ForcedFailure::None
    };
    Ok(send(&store, Channel::Email, key, forced).await)
}

async fn send_sms(
    State(store): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SimError> {
    store.count_request(Channel::Sms);
    let key = idempotency_key(&headers)?;
    let req: SmsRequest = parse(&body)?;
    if !req.to.chars().any(|c| c.is_ascii_digit()) {
        return invalid("`to` must be a phone number");
    }
    if is_blank(&req.text) {
        return invalid("`text` must not be empty");
    }
    let forced = if sms_unreachable(&req.to) {
        ForcedFailure::Rejected("number unreachable (simulated)")
    } else {
        ForcedFailure::None
    };
    Ok(send(&store, Channel::Sms, key, forced).await)
}

/// Addresses at `bounce.test` always bounce, so tests can force the email -> SMS fallback.
pub fn email_bounces(to: &str) -> bool {
    to.rsplit_once('@')
        .is_some_and(|(_, domain)| domain.trim().eq_ignore_ascii_case("bounce.test"))
}

/// Numbers whose last four digits are `0000` are always unreachable, so tests can force DEAD.
pub fn sms_unreachable(to: &str) -> bool {
    let digits: Vec<char> = to.chars().filter(char::is_ascii_digit).collect();
    digits.len() >= 4 && digits[digits.len() - 4..].iter().all(|&d| d == '0')
}

async fn send(store: &Store, channel: Channel, key: String, forced: ForcedFailure) -> Response {
    let latency = store.config().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let outcome = store.send(channel, &key, forced);
    tracing::debug!(channel = %channel, idempotency_key = %key, outcome = ?outcome, "send");
    match outcome {
        Outcome::Delivered { message_id } => Json(SendResponse {
            message_id,
            duplicate: false,
        })
        .into_response(),
        Outcome::Duplicate { message_id } => Json(SendResponse {
            message_id,
            duplicate: true,
        })
        .into_response(),
        Outcome::Rejected(reason) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, reason).into_response()
        }
        Outcome::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily unavailable (simulated)",
        )
        .into_response(),
    }
}

async fn stats(State(store): State<AppState>) -> Json<Stats> {
    Json(store.stats())
}

/// Query of `GET /v1/deliveries`.
#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    /// Only keys starting with this (e.g. a bill id).
    pub key_prefix: Option<String>,
}

async fn deliveries(
    State(store): State<AppState>,
    Query(query): Query<DeliveriesQuery>,
) -> Json<Vec<Delivery>> {
    Json(store.deliveries(query.key_prefix.as_deref()))
}

async fn reset(State(store): State<AppState>) -> StatusCode {
    store.reset();
    tracing::info!("state reset");
    StatusCode::NO_CONTENT
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bounce_test_domain_bounces() {
        assert!(email_bounces("kim@bounce.test"));
        assert!(email_bounces("kim@BOUNCE.test"));
        assert!(!email_bounces("kim@example.com"));
        assert!(!email_bounces("bounce.test@example.com"));
    }

    #[test]
    fn numbers_ending_in_four_zeros_are_unreachable() {
        assert!(sms_unreachable("+82 10-1234-0000"));
        assert!(sms_unreachable("01012340000"));
        assert!(!sms_unreachable("+821012345678"));
        assert!(!sms_unreachable("000"));
    }
}
