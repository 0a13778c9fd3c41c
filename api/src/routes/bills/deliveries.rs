//! `GET /v1/bills/{id}/deliveries`: every delivery attempt of a bill, oldest first.

use super::parse_id;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::domain::BillId;
use utoipa::ToSchema;

/// One send attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct DeliveryAttempt {
    pub id: i64,
    /// `email` or `sms`.
    pub channel: String,
    /// The bill's attempt number (since its last replay).
    pub attempt: i32,
    pub replay_count: i32,
    /// `SENT`, `FAILED` or `EXPIRED` (the lease ran out).
    pub outcome: String,
    pub error: Option<String>,
    /// The key sent to the provider: `{bill_id}:{channel}:{replay_count}`.
    pub idempotency_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deliveries {
    #[schema(value_type = Uuid)]
    pub bill_id: BillId,
    pub deliveries: Vec<DeliveryAttempt>,
}

/// The delivery attempts of a bill.
#[utoipa::path(
    get,
    path = "/v1/bills/{id}/deliveries",
    tag = "bills",
    params(("id" = Uuid, Path, description = "The bill id")),
    responses(
        (status = 200, body = Deliveries),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such bill", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deliveries>, ApiError> {
    let id = parse_id(&id)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bills WHERE id = $1)")
        .bind(id.0)
        .fetch_one(&state.pool)
        .await?;
    if !exists {
        return Err(ApiError::NotFound(format!("bill {id}")));
    }
    let deliveries: Vec<DeliveryAttempt> = sqlx::query_as(
        "SELECT id, channel, attempt, replay_count, outcome, error, idempotency_key, started_at, finished_at
         FROM delivery_attempts WHERE bill_id = $1 ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Deliveries {
        bill_id: id,
        deliveries,
    }))
}
