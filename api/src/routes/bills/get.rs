//! `GET /v1/bills/{id}`: the bill with its state, items and a masked recipient.

use super::parse_id;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use shared::crypto::Keyring;
use shared::domain::{BillId, BillStatus, Channel};
use shared::mask::{mask_email, mask_name, mask_phone};
use utoipa::ToSchema;
use uuid::Uuid;

/// The recipient as the API shows it: masked, never in clear.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MaskedRecipient {
    #[schema(example = "K*** *****")]
    pub name: String,
    #[schema(example = "k***@example.com")]
    pub email: String,
    #[schema(example = "+********5678")]
    pub phone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemView {
    pub name: String,
    pub amount: i64,
}

/// A bill and its delivery state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BillView {
    #[schema(value_type = Uuid)]
    pub id: BillId,
    pub external_id: Option<String>,
    pub status: BillStatus,
    /// The channel the bill is on (email first, SMS as the fallback).
    pub channel: Channel,
    pub recipient: MaskedRecipient,
    pub billing_period: String,
    pub due_date: NaiveDate,
    pub currency: String,
    /// Sum of the items, in minor units.
    pub total: i64,
    pub items: Vec<ItemView>,
    /// Send attempts since the last replay.
    pub attempts: i32,
    /// How many times an operator replayed the bill.
    pub replay_count: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    external_id: Option<String>,
    recipient_name: String,
    recipient_email: String,
    recipient_phone: String,
    billing_period: String,
    due_date: NaiveDate,
    currency: String,
    total_minor: i64,
    status: String,
    channel: String,
    attempts: i32,
    replay_count: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    dead_at: Option<DateTime<Utc>>,
    items: sqlx::types::Json<Vec<ItemView>>,
}

/// Read one bill.
#[utoipa::path(
    get,
    path = "/v1/bills/{id}",
    tag = "bills",
    params(("id" = Uuid, Path, description = "The bill id")),
    responses(
        (status = 200, body = BillView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such bill", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_bill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BillView>, ApiError> {
    let id = parse_id(&id)?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT b.id, b.external_id, b.recipient_name, b.recipient_email, b.recipient_phone,
                b.billing_period, b.due_date, b.currency, b.total_minor, b.status, b.channel,
                b.attempts, b.replay_count, b.last_error, b.created_at, b.updated_at,
                b.sent_at, b.dead_at,
                COALESCE((SELECT jsonb_agg(jsonb_build_object('name', i.name, 'amount', i.amount_minor)
                                           ORDER BY i.position)
                          FROM bill_items i WHERE i.bill_id = b.id), '[]'::jsonb) AS items
         FROM bills b WHERE b.id = $1",
    )
    .bind(id.0)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::NotFound(format!("bill {id}")))?;
    Ok(Json(view(row, state.keyring())?))
}

fn view(row: Row, keyring: &Keyring) -> Result<BillView, ApiError> {
    let id = row.id;
    // A value we cannot decrypt (unknown key id after a bad rotation) is shown fully masked
    // rather than failing the whole read; the reason is logged without the value.
    let reveal =
        |field: &str, ct: &str, mask: fn(&str) -> String| match keyring.decrypt(id, field, ct) {
            Ok(plain) => mask(&plain),
            Err(e) => {
                tracing::warn!(bill.id = %id, field, error = %e, "cannot decrypt recipient field");
                "***".to_owned()
            }
        };
    let status = row
        .status
        .parse::<BillStatus>()
        .map_err(|e| anyhow::anyhow!("bill {id} has a bad status: {e}"))?;
    let channel = row
        .channel
        .parse::<Channel>()
        .map_err(|e| anyhow::anyhow!("bill {id} has a bad channel: {e}"))?;
    Ok(BillView {
        id: BillId(id),
        external_id: row.external_id,
        status,
        channel,
        recipient: MaskedRecipient {
            name: reveal("name", &row.recipient_name, mask_name),
            email: reveal("email", &row.recipient_email, mask_email),
            phone: reveal("phone", &row.recipient_phone, mask_phone),
        },
        billing_period: row.billing_period,
        due_date: row.due_date,
        currency: row.currency,
        total: row.total_minor,
        items: row.items.0,
        attempts: row.attempts,
        replay_count: row.replay_count,
        last_error: row.last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
        sent_at: row.sent_at,
        dead_at: row.dead_at,
    })
}
