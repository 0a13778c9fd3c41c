//! `GET /v1/stats`: bills by status and channel, and the outbox backlog.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub bills: BillStats,
    pub outbox: OutboxStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BillStats {
    pub total: i64,
    /// Count per status (`PENDING`, `SENDING`, `SENT`, `DEAD`); every status is present.
    pub by_status: BTreeMap<String, i64>,
    /// Count per current channel (`email`, `sms`); every channel is present.
    pub by_channel: BTreeMap<String, i64>,
    /// Count per status and channel pair that has bills.
    pub by_status_and_channel: Vec<StatusChannelCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusChannelCount {
    pub status: String,
    pub channel: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxStats {
    /// Outbox rows not yet published to Kafka.
    pub backlog: i64,
    /// Age in seconds of the oldest unpublished row; null when the backlog is empty.
    pub oldest_unpublished_age_seconds: Option<f64>,
}

/// Counts of bills and the outbox backlog.
#[utoipa::path(get, path = "/v1/stats", tag = "stats", responses(
    (status = 200, body = Stats),
    (status = 503, description = "database unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, channel, count(*) FROM bills GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&state.pool)
            .await?;
    let (backlog, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
         FROM outbox_pending",
    )
    .fetch_one(&state.pool)
    .await?;

    let mut by_status: BTreeMap<String, i64> = shared::domain::BillStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut by_channel: BTreeMap<String, i64> = shared::domain::Channel::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), 0))
        .collect();
    let mut total = 0;
    for (status, channel, count) in &rows {
        *by_status.entry(status.clone()).or_default() += count;
        *by_channel.entry(channel.clone()).or_default() += count;
        total += count;
    }
    Ok(Json(Stats {
        bills: BillStats {
            total,
            by_status,
            by_channel,
            by_status_and_channel: rows
                .into_iter()
                .map(|(status, channel, count)| StatusChannelCount {
                    status,
                    channel,
                    count,
                })
                .collect(),
        },
        outbox: OutboxStats {
            backlog,
            oldest_unpublished_age_seconds: oldest,
        },
    }))
}
