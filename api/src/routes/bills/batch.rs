//! `POST /v1/bills/batch`: up to 1,000 bills in one transaction, all or nothing. Every invalid
//! item is reported with its index; a batch whose keys were used with other bodies is refused
//! with the indexes of those items.

use super::{BatchRequest, BillAccepted};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::http_metrics::{BILLS_ACCEPTED, BILLS_REPLAYED, IDEMPOTENCY_CONFLICTS};
use crate::idempotency;
use crate::state::AppState;
use crate::trace_context::TraceContext;
use crate::validation::{parse_bill, Loc};
use crate::write::{insert_batch, PreparedBill, Written};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use utoipa::ToSchema;

pub const MAX_BATCH: usize = 1_000;

/// One accepted bill of a batch, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchItemAccepted {
    /// Position in the request.
    pub index: usize,
    #[serde(flatten)]
    pub bill: BillAccepted,
    /// True when the item's key was used before with the same body (the earlier bill's id).
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    /// Bills inserted by this request.
    pub accepted: usize,
    /// Bills answered from an earlier request with the same keys and bodies.
    pub replayed: usize,
    pub bills: Vec<BatchItemAccepted>,
}

/// Enqueue up to 1,000 bills, all or nothing.
///
/// Each bill's idempotency key is `{Idempotency-Key}:{index}` when the header is sent, else its
/// own `external_id`.
#[utoipa::path(
    post,
    path = "/v1/bills/batch",
    tag = "bills",
    request_body = BatchRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Key of the batch; item i uses `{key}:{i}`"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 202, description = "All bills accepted", body = BatchAccepted),
        (status = 400, description = "Malformed JSON or a bad header", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Some keys were used with other bodies (indexes listed); nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid items, each error with its index; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let header_key = idempotency::header_key(&headers)?;
    let root = Loc::root();
    let list = match body.get("bills") {
        Some(Value::Array(list)) if body.as_object().is_some_and(|o| o.len() == 1) => list,
        _ => {
            return Err(ApiError::Validation(vec![root.key("bills").error(
                "the body must be an object with one field, `bills`: an array of bills",
            )]))
        }
    };
    if list.is_empty() || list.len() > MAX_BATCH {
        return Err(ApiError::Validation(vec![root
            .key("bills")
            .error(format!("must hold 1 to {MAX_BATCH} bills"))]));
    }

    let mut errors = Vec::new();
    let mut valid = Vec::with_capacity(list.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in list.iter().enumerate() {
        let loc = Loc::batch_item(i);
        if let Some(bill) = parse_bill(item, &loc, &mut errors) {
            let key = match &header_key {
                Some(k) => Some(format!("{k}:{i}")),
                None => bill.external_id.clone(),
            };
            if let Some(k) = &key {
                if let Some(first) = seen.insert(k.clone(), i) {
                    errors.push(loc.key("external_id").error(format!(
                        "repeats the idempotency key of bills[{first}] in this batch"
                    )));
                }
            }
            valid.push((bill, key));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let traceparent = trace.traceparent();
    let keyring = state.keyring();
    let topic = &state.topics().email;
    let prepared: Vec<PreparedBill> = valid
        .into_iter()
        .map(|(bill, key)| PreparedBill::new(&bill, key, keyring, topic, &traceparent))
        .collect();

    match insert_batch(&state.pool, &prepared).await? {
        Ok(written) => {
            state.relay_waker.poke();
            let mut accepted = 0;
            let mut replayed = 0;
            let mut bills = Vec::with_capacity(written.len());
            for (index, w) in written.into_iter().enumerate() {
                let (id, was_replayed) = match w {
                    Written::Inserted(id) => (id, false),
                    Written::Replayed(id) => (id, true),
                    Written::Conflict => {
                        return Err(anyhow::anyhow!("a conflict survived a committed batch").into())
                    }
                };
                if was_replayed {
                    replayed += 1;
                } else {
                    accepted += 1;
                }
                bills.push(BatchItemAccepted {
                    index,
                    bill: BillAccepted::new(id),
                    replayed: was_replayed,
                });
            }
            metrics::counter!(BILLS_ACCEPTED, "mode" => "batch").increment(accepted as u64);
            metrics::counter!(BILLS_REPLAYED).increment(replayed as u64);
            tracing::info!(
                batch.accepted = accepted,
                batch.replayed = replayed,
                "batch accepted"
            );
            Ok((
                StatusCode::ACCEPTED,
                Json(BatchAccepted {
                    accepted,
                    replayed,
                    bills,
                }),
            ))
        }
        Err(indexes) => {
            metrics::counter!(IDEMPOTENCY_CONFLICTS).increment(indexes.len() as u64);
            let errors = indexes
                .iter()
                .map(|&i| {
                    Loc::batch_item(i).error(
                        "this idempotency key was already used with a different request body",
                    )
                })
                .collect();
            Err(ApiError::Conflict {
                detail: format!(
                    "{} bill(s) reuse idempotency keys with different bodies; nothing was written",
                    indexes.len()
                ),
                errors,
            })
        }
    }
}
