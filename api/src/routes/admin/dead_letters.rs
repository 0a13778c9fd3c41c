//! `GET /v1/admin/dead-letters`: dead bills, newest first, keyset-paginated on the id, filtered
//! by time of death, reason (`last_error` contains, case-insensitive) and last channel.

use crate::error::{ApiError, FieldError, Problem};
use crate::routes::bills::parse_id;
use crate::state::AppState;
use crate::validation::Loc;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::domain::Channel;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    // The fields are parsed by hand (every bad one reported in one problem); the documented
    // types are what the parsing accepts.
    /// Died at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// Died before this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub until: Option<String>,
    /// Text the last error contains (case-insensitive).
    #[param(max_length = 200, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub reason: Option<String>,
    /// Channel the bill died on: `email` or `sms`.
    #[param(value_type = Option<Channel>)]
    pub channel: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// Filter shared by the list and the bulk replay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterFilter {
    /// Died at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Died before this time.
    pub until: Option<DateTime<Utc>>,
    /// Text the last error contains (case-insensitive).
    #[schema(max_length = 200, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub reason: Option<String>,
    pub channel: Option<Channel>,
}

impl DeadLetterFilter {
    /// Appends ` AND ...` conditions for this filter to a query on `bills`.
    pub fn push_conditions(&self, q: &mut QueryBuilder<'_, Postgres>) {
        if let Some(since) = self.since {
            q.push(" AND dead_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            q.push(" AND dead_at < ").push_bind(until);
        }
        if let Some(reason) = &self.reason {
            let escaped = reason
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            q.push(" AND last_error ILIKE ")
                .push_bind(format!("%{escaped}%"));
        }
        if let Some(channel) = self.channel {
            q.push(" AND channel = ").push_bind(channel.as_str());
        }
    }
}

/// `reason` is matched with ILIKE: bounded, and free of control characters (Postgres text
/// cannot hold NUL, which would otherwise surface as a 500).
pub fn check_reason(reason: Option<&str>, loc: Loc, errors: &mut Vec<FieldError>) {
    if let Some(r) = reason {
        if r.chars().count() > 200 || r.chars().any(char::is_control) {
            errors.push(loc.error("must be at most 200 characters without control characters"));
        }
    }
}

/// A dead bill (no recipient data).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub external_id: Option<String>,
    /// The channel it died on.
    pub channel: String,
    pub attempts: i32,
    pub replay_count: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub dead_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

fn parse_time(raw: Option<&str>, loc: Loc, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let raw = raw.filter(|s| !s.is_empty())?;
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            errors.push(loc.error("must be an RFC 3339 time, e.g. 2026-11-22T00:00:00Z"));
            None
        }
    }
}

/// List dead-lettered bills.
#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters",
    tag = "admin",
    params(DeadLetterParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DeadLetterPage),
        (status = 400, description = "Bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "ADMIN_TOKEN not configured, or database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let Query(p) = params.map_err(|_| ApiError::bad_request("the query string is malformed"))?;
    let root = Loc::root();
    let mut errors = Vec::new();
    let since = parse_time(p.since.as_deref(), root.key("since"), &mut errors);
    let until = parse_time(p.until.as_deref(), root.key("until"), &mut errors);
    let channel = match p.channel.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(c) => c
            .parse::<Channel>()
            .map_err(|_| errors.push(root.key("channel").error("must be email or sms")))
            .ok(),
    };
    let reason = p.reason.filter(|s| !s.is_empty());
    check_reason(reason.as_deref(), root.key("reason"), &mut errors);
    let limit = match p.limit.as_deref().filter(|s| !s.is_empty()) {
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
    let cursor = match p.cursor.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => parse_id(s)
            .map(|id| id.0)
            .map_err(|_| {
                errors.push(
                    root.key("cursor")
                        .error("is not a cursor returned by this API"),
                )
            })
            .ok(),
    };
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: "invalid query parameters".into(),
            errors,
        });
    }

    let filter = DeadLetterFilter {
        since,
        until,
        reason,
        channel,
    };
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT id, external_id, channel, attempts, replay_count, last_error, created_at, dead_at
         FROM bills WHERE status = 'DEAD'",
    );
    filter.push_conditions(&mut q);
    if let Some(c) = cursor {
        q.push(" AND id < ").push_bind(c);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    let mut items: Vec<DeadLetter> = q.build_query_as().fetch_all(&state.pool).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|b| b.id.to_string())
    } else {
        None
    };
    Ok(Json(DeadLetterPage { items, next_cursor }))
}
