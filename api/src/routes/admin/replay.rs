//! Replaying dead bills: `POST /v1/admin/dead-letters/{id}/replay` and, by filter,
//! `POST /v1/admin/dead-letters/replay` (with `dry_run` and `limit`). A replay is one
//! transaction: the bill goes `DEAD -> PENDING(email)` with its replay count incremented and its
//! per-replay counters reset, together with a `bills.email` outbox row carrying the new replay
//! count (so the provider idempotency key `{bill}:{channel}:{replay}` is fresh). A per-bill cap
//! (`MAX_REPLAYS`) stops a bill that keeps dying from looping forever.

use super::dead_letters::{check_reason, DeadLetterFilter};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::routes::bills::parse_id;
use crate::state::AppState;
use crate::trace_context::TraceContext;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shared::domain::{BillId, BillStatus, Channel};
use shared::events::event_type;
use shared::outbox::NewOutboxEvent;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1_000;

const REPLAY_SQL: &str = "UPDATE bills SET status = 'PENDING', channel = 'email',
        replay_count = replay_count + 1, attempts = 0, lease_expiries = 0, claim_token = NULL,
        lease_until = NULL, last_error = NULL, dead_at = NULL, traceparent = $2, updated_at = now()
    WHERE id = ANY($1) AND status = 'DEAD'
    RETURNING id, replay_count";

/// A replayed bill.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    pub id: Uuid,
    pub status: BillStatus,
    pub channel: Channel,
    /// The bill's replay count after this replay.
    pub replay_count: i32,
}

/// Moves the given DEAD bills back to PENDING(email) and writes their outbox rows, in the
/// caller's transaction.
async fn replay_ids(
    conn: &mut PgConnection,
    state: &AppState,
    ids: &[Uuid],
    traceparent: &str,
) -> Result<Vec<Replayed>, ApiError> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(REPLAY_SQL)
        .bind(ids)
        .bind(traceparent)
        .fetch_all(&mut *conn)
        .await?;
    let events: Vec<NewOutboxEvent> = rows
        .iter()
        .map(|(id, replay_count)| {
            NewOutboxEvent::bill(
                &state.topics().email,
                event_type::EMAIL_REQUESTED,
                BillId(*id),
                Channel::Email,
                0,
                *replay_count,
                Some(traceparent),
                None,
            )
        })
        .collect();
    shared::outbox::insert(conn, &events).await?;
    metrics::counter!("billing_api_dead_letter_replays_total").increment(rows.len() as u64);
    Ok(rows
        .into_iter()
        .map(|(id, replay_count)| Replayed {
            id,
            status: BillStatus::Pending,
            channel: Channel::Email,
            replay_count,
        })
        .collect())
}

/// Replay one dead bill.
#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{id}/replay",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The bill id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Back to PENDING on email, with a new outbox event", body = Replayed),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such bill", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The bill is not DEAD, or reached the replay cap", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "ADMIN_TOKEN not configured, or database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_one(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let id = parse_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT status, replay_count FROM bills WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, replay_count) = row.ok_or_else(|| ApiError::NotFound(format!("bill {id}")))?;
    if status != BillStatus::Dead.as_str() {
        return Err(ApiError::Conflict {
            detail: format!("bill {id} is {status}; only DEAD bills can be replayed"),
            errors: vec![],
        });
    }
    if replay_count >= state.max_replays() {
        return Err(ApiError::Conflict {
            detail: format!(
                "bill {id} was already replayed {replay_count} time(s), the cap (MAX_REPLAYS = {})",
                state.max_replays()
            ),
            errors: vec![],
        });
    }
    let mut replayed = replay_ids(&mut tx, &state, &[id.0], &trace.traceparent()).await?;
    tx.commit().await?;
    let replayed = replayed
        .pop()
        .ok_or_else(|| anyhow::anyhow!("bill {id} changed under its row lock"))?;
    tracing::info!(bill.id = %id, replay_count = replayed.replay_count, "dead bill replayed");
    Ok((StatusCode::ACCEPTED, Json(replayed)))
}

/// Which dead bills to replay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    pub filter: DeadLetterFilter,
    /// Report what would be replayed without changing anything.
    #[serde(default)]
    pub dry_run: bool,
    /// At most this many bills (1 to 1,000, default 100), oldest first.
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Dead bills matching the filter, under the cap, within the limit.
    pub matched: usize,
    /// Bills replayed (0 on a dry run).
    pub replayed: usize,
    /// Dead bills matching the filter that reached the replay cap and are left alone.
    pub skipped_at_cap: i64,
    /// The matched bill ids.
    pub ids: Vec<Uuid>,
}

/// Replay dead bills by filter.
#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/replay",
    tag = "admin",
    request_body = ReplayRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dry run: what would be replayed", body = ReplayReport),
        (status = 202, description = "Replayed", body = ReplayReport),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter or limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "ADMIN_TOKEN not configured, or database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_many(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    ApiJson(req): ApiJson<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayReport>), ApiError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Validation(vec![crate::validation::Loc::root()
            .key("limit")
            .error(format!("must be an integer from 1 to {MAX_LIMIT}"))]));
    }
    let mut errors = Vec::new();
    check_reason(
        req.filter.reason.as_deref(),
        crate::validation::Loc::root().key("filter").key("reason"),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let max = state.max_replays();
    let mut tx = state.pool.begin().await?;
    // SKIP LOCKED: two operators replaying at once split the bills instead of waiting.
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT id FROM bills WHERE status = 'DEAD' AND replay_count < ",
    );
    q.push_bind(max);
    req.filter.push_conditions(&mut q);
    q.push(" ORDER BY id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED");
    let ids: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut *tx).await?;

    let mut capped = QueryBuilder::<Postgres>::new(
        "SELECT count(*) FROM bills WHERE status = 'DEAD' AND replay_count >= ",
    );
    capped.push_bind(max);
    req.filter.push_conditions(&mut capped);
    let skipped_at_cap: i64 = capped.build_query_scalar().fetch_one(&mut *tx).await?;

    if req.dry_run || ids.is_empty() {
        tx.rollback().await?;
        let report = ReplayReport {
            dry_run: req.dry_run,
            matched: ids.len(),
            replayed: 0,
            skipped_at_cap,
            ids,
        };
        return Ok((StatusCode::OK, Json(report)));
    }
    let replayed = replay_ids(&mut tx, &state, &ids, &trace.traceparent()).await?;
    tx.commit().await?;
    tracing::info!(replayed = replayed.len(), "dead bills replayed by filter");
    let report = ReplayReport {
        dry_run: false,
        matched: ids.len(),
        replayed: replayed.len(),
        skipped_at_cap,
        ids: replayed.iter().map(|r| r.id).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(report)))
}
