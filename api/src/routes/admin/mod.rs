//! Operator endpoints under `/v1/admin` (dead letters and replay), guarded by `ADMIN_TOKEN`.
//! Mounted by [`crate::startup::router`]; the endpoints themselves arrive with issue 6.

use crate::state::AppState;
use axum::Router;

/// The admin router, nested under `/v1/admin`.
pub fn router() -> Router<AppState> {
    Router::new()
}
