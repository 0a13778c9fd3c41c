//! `POST /v1/bills`: validate, encrypt, and write the bill with its items and outbox row in one
//! statement; replay or refuse a reused idempotency key.

use super::{BillAccepted, CreateBillRequest};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::http_metrics::{BILLS_ACCEPTED, BILLS_REPLAYED, IDEMPOTENCY_CONFLICTS};
use crate::idempotency::{self, REPLAYED_HEADER};
use crate::state::AppState;
use crate::trace_context::TraceContext;
use crate::validation::{parse_bill, Loc};
use crate::write::{PreparedBill, Written};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

/// Enqueue one bill.
///
/// The bill, its items and its `bills.email` outbox row are committed together. With the same
/// `Idempotency-Key` (or, without the header, the same `external_id`) and the same body, the
/// first answer is returned again; with another body the answer is 409.
#[utoipa::path(
    post,
    path = "/v1/bills",
    tag = "bills",
    request_body = CreateBillRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 200 visible ASCII characters"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 202, description = "Accepted (or replayed: header `Idempotent-Replayed: true`)", body = BillAccepted,
            headers(("Location" = String, description = "The bill's URL"))),
        (status = 400, description = "Malformed JSON or a bad header", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or invalid fields, all listed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_bill(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let header_key = idempotency::header_key(&headers)?;
    let mut errors = Vec::new();
    let bill = parse_bill(&body, &Loc::root(), &mut errors).ok_or(ApiError::Validation(errors))?;
    let key = header_key.or_else(|| bill.external_id.clone());
    let prepared = PreparedBill::new(
        &bill,
        key,
        state.keyring(),
        &state.topics().email,
        &trace.traceparent(),
    );
    match state.writers.insert(prepared).await? {
        Written::Inserted(id) => {
            state.relay_waker.poke();
            metrics::counter!(BILLS_ACCEPTED, "mode" => "single").increment(1);
            tracing::debug!(bill.id = %id, "bill accepted");
            Ok(accepted(BillAccepted::new(id), false))
        }
        Written::Replayed(id) => {
            metrics::counter!(BILLS_REPLAYED).increment(1);
            Ok(accepted(BillAccepted::new(id), true))
        }
        Written::Conflict => {
            metrics::counter!(IDEMPOTENCY_CONFLICTS).increment(1);
            Err(ApiError::Conflict {
                detail: "this idempotency key was already used with a different request body"
                    .into(),
                errors: vec![],
            })
        }
    }
}

fn accepted(answer: BillAccepted, replayed: bool) -> Response {
    let location = HeaderValue::from_str(&answer.location).ok();
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}
