//! `GET /v1/bills?status=&limit=&cursor=`: newest first, keyset pagination on the id (UUIDv7,
//! so id order is creation order). The cursor is the last id of the previous page; a page
//! costs the same however deep it is.

use super::parse_id;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::validation::Loc;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use shared::domain::BillStatus;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    // The fields are parsed by hand (every bad one reported in one problem); the documented
    // types are what the parsing accepts.
    /// Only bills in this status: PENDING, SENDING, SENT or DEAD.
    #[param(value_type = Option<BillStatus>)]
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// A bill in a list (no recipient: lists never decrypt).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct BillSummary {
    pub id: Uuid,
    pub external_id: Option<String>,
    pub status: String,
    pub channel: String,
    pub billing_period: String,
    pub due_date: NaiveDate,
    pub currency: String,
    pub total: i64,
    pub attempts: i32,
    pub replay_count: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BillPage {
    pub items: Vec<BillSummary>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List bills, newest first.
#[utoipa::path(
    get,
    path = "/v1/bills",
    tag = "bills",
    params(ListParams),
    responses(
        (status = 200, body = BillPage),
        (status = 400, description = "Bad status, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_bills(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<BillPage>, ApiError> {
    let Query(params) =
        params.map_err(|_| ApiError::bad_request("the query string is malformed"))?;
    let root = Loc::root();
    let mut errors = Vec::new();
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<BillStatus>() {
            Ok(st) => Some(st),
            Err(_) => {
                errors.push(
                    root.key("status")
                        .error("must be PENDING, SENDING, SENT or DEAD"),
                );
                None
            }
        },
    };
    let limit = match params.limit.as_deref().filter(|s| !s.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(
                    root.key("limit")
                        .error(format!("must be an integer from 1 to {MAX_LIMIT}")),
                );
                DEFAULT_LIMIT
            }
        },
    };
    let cursor = match params.cursor.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match parse_id(s) {
            Ok(id) => Some(id.0),
            Err(_) => {
                errors.push(
                    root.key("cursor")
                        .error("is not a cursor returned by this API"),
                );
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: "invalid query parameters".into(),
            errors,
        });
    }

    // One statement per filter combination, so each gets a plan that uses its index.
    const COLS: &str = "SELECT id, external_id, status, channel, billing_period, due_date, currency,
        total_minor AS total, attempts, replay_count, last_error, created_at, updated_at FROM bills";
    let sql = match (status.is_some(), cursor.is_some()) {
        (false, false) => format!("{COLS} ORDER BY id DESC LIMIT $1"),
        (false, true) => format!("{COLS} WHERE id < $2 ORDER BY id DESC LIMIT $1"),
        (true, false) => format!("{COLS} WHERE status = $2 ORDER BY id DESC LIMIT $1"),
        (true, true) => format!("{COLS} WHERE status = $3 AND id < $2 ORDER BY id DESC LIMIT $1"),
    };
    let mut query = sqlx::query_as::<_, BillSummary>(&sql).bind(limit + 1);
    if let Some(c) = cursor {
        query = query.bind(c);
    }
    if let Some(s) = status {
        query = query.bind(s.as_str());
    }
    let mut items = query.fetch_all(&state.pool).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|b| b.id.to_string())
    } else {
        None
    };
    Ok(Json(BillPage { items, next_cursor }))
}
