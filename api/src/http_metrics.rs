//! Request metrics (`billing_api_requests_total{method,route,status}` and
//! `billing_api_request_duration_seconds{method,route}`) recorded by a middleware, and the
//! names of the bill counters the handlers bump.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

pub const BILLS_ACCEPTED: &str = "billing_api_bills_accepted_total";
/// Create requests answered again from their idempotency key (same key, same body).
pub const BILLS_REPLAYED: &str = "billing_api_idempotent_replays_total";
pub const IDEMPOTENCY_CONFLICTS: &str = "billing_api_idempotency_conflicts_total";
/// Single bills committed together by one writer statement (see [`crate::writers`]).
pub const WRITE_GROUP_SIZE: &str = "billing_api_write_group_bills";

/// Middleware recording one count and one duration per request, labelled by route template
/// (never by the concrete path, which would carry ids and explode cardinality).
pub async fn layer(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("billing_api_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("billing_api_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
