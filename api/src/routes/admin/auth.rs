//! Bearer-token check of the admin endpoints.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// 503 when no token is configured, 401 when the header is missing or wrong.
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.admin_token() else {
        return ApiError::NotConfigured(
            "admin endpoints are disabled: set ADMIN_TOKEN to enable them".into(),
        )
        .into_response();
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    // Constant time over the token bytes, so timing does not reveal a matching prefix.
    let ok: bool = presented
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into();
    if !ok || presented.is_empty() {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}
