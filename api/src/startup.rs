//! Building and running the server: the router with its layers (request id, tracing, metrics,
//! trace context, body limit, timeout, problem+json for bare errors), Swagger UI, and an
//! [`Application`] that binds its listener first (port 0 in tests) and shuts down gracefully.

use crate::error::{problem_for_status, problem_response, PROBLEM_JSON};
use crate::openapi::ApiDoc;
use crate::routes::{admin, bills, health, stats};
use crate::settings::Settings;
use crate::state::AppState;
use crate::{http_metrics, trace_context};
use anyhow::Context;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

/// Largest request body: a batch of 1,000 bills is ~0.4 MiB, so this leaves ample room.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The request path as logged: known route words and UUIDs kept, every other segment `*`, so
/// a client that puts an e-mail address or a phone number in a path does not get it logged.
fn loggable_path(path: &str) -> String {
    const WORDS: [&str; 13] = [
        "v1",
        "bills",
        "batch",
        "deliveries",
        "stats",
        "admin",
        "dead-letters",
        "replay",
        "healthz",
        "readyz",
        "metrics",
        "swagger-ui",
        "api-docs",
    ];
    path.split('/')
        .map(|seg| {
            if seg.is_empty() || WORDS.contains(&seg) || uuid::Uuid::parse_str(seg).is_ok() {
                seg
            } else {
                "*"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Knobs of the router that tests and the benchmark may change.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub request_timeout: Duration,
    pub body_limit: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            body_limit: BODY_LIMIT,
        }
    }
}

/// The full router with default settings.
pub fn router(state: AppState) -> Router {
    router_with(state, RouterConfig::default())
}

pub fn router_with(state: AppState, config: RouterConfig) -> Router {
    // Install the process-wide recorder before the first request counts anything.
    let _ = shared::ops::metrics_handle();
    let x_request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<Body>| {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // Query strings are left out on purpose, and so is any path segment that is not
            // one of the API's own words or a bill id: a client may put anything in a path.
            tracing::info_span!(
                "http",
                http.method = %req.method(),
                http.path = %loggable_path(req.uri().path()),
                request_id,
                trace_id = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG));

    Router::new()
        .merge(bills::router())
        .route("/v1/stats", get(stats::stats))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest("/v1/admin", admin::router(state.clone()))
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { problem_response(&problem_for_status(StatusCode::NOT_FOUND)) })
        // Router::layer wraps what is already there, so the last layer added is the outermost:
        // body limit and timeout sit next to the handlers, request id and tracing outside.
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(from_fn(trace_context::layer))
        .layer(from_fn(http_metrics::layer))
        .layer(from_fn(problem_for_bare_errors))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// Layers and the router answer some errors with a bare status (413 from the body limit, 405,
/// 503 from the timeout); give them the same problem+json envelope as everything else.
async fn problem_for_bare_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut problem = problem_response(&problem_for_status(status)).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.drain().filter_map(|(n, v)| n.map(|n| (n, v))) {
        problem.headers_mut().entry(name).or_insert(value);
    }
    problem
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl Application {
    /// Builds the state from settings (keyring, lazy pool, optional migrations) and binds.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let keyring = settings.keyring.keyring()?;
        // Lazy: the API starts and answers 503 while Postgres is down, and recovers by itself.
        let pool = shared::db::connect_lazy(&settings.database)?;
        if settings.migrate {
            shared::db::migrate(&pool).await?;
        }
        let state = AppState::new(
            pool,
            keyring,
            settings.kafka.topics.clone(),
            settings.admin_token.clone(),
            settings.max_replays,
        )
        .with_writers(settings.writers, settings.write_group);
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("failed to bind API_ADDR {}", settings.addr))?;
        let config = RouterConfig {
            request_timeout: Duration::from_secs(settings.request_timeout_secs.max(1)),
            ..RouterConfig::default()
        };
        Self::from_parts(listener, router_with(state, config))
    }

    /// Wraps an already bound listener and a router (tests, the benchmark).
    pub fn from_parts(listener: TcpListener, router: Router) -> anyhow::Result<Self> {
        let addr = listener
            .local_addr()
            .context("failed to read the bound address")?;
        Ok(Self {
            listener,
            router,
            addr,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires, then stops accepting and finishes in-flight requests.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
            .context("the HTTP server failed")
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn logged_paths_keep_route_words_and_bill_ids_and_hide_everything_else() {
        let id = "01937c2e-7b1a-7c3e-9f00-3a5d2b1c0e4f";
        assert_eq!(
            loggable_path(&format!("/v1/bills/{id}/deliveries")),
            format!("/v1/bills/{id}/deliveries")
        );
        assert_eq!(
            loggable_path("/v1/admin/dead-letters/replay"),
            "/v1/admin/dead-letters/replay"
        );
        assert_eq!(
            loggable_path("/v1/bills/kim.minsu@example.com"),
            "/v1/bills/*"
        );
        assert_eq!(loggable_path("/v1/bills/01012345678/x"), "/v1/bills/*/*");
    }
}
