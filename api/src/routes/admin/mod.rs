//! Operator endpoints under `/v1/admin`: list dead-lettered bills and replay them. Every route
//! requires `Authorization: Bearer $ADMIN_TOKEN` (compared in constant time); without a
//! configured token the endpoints answer 503 "not configured" rather than being open.

pub mod auth;
pub mod dead_letters;
pub mod replay;

use crate::state::AppState;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

/// The admin router, nested under `/v1/admin`.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/dead-letters", get(dead_letters::list_dead_letters))
        .route("/dead-letters/replay", post(replay::replay_many))
        .route("/dead-letters/{id}/replay", post(replay::replay_one))
        .route_layer(from_fn_with_state(state, auth::require_admin))
}
