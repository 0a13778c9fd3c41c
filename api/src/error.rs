//! The one error type of every handler. It renders RFC 9457 `application/problem+json` with
//! `type`, `title`, `status`, `detail` and per-field `errors`. Database trouble that means
//! "Postgres is unreachable" becomes 503; any other internal failure is an opaque 500 whose
//! full chain is logged once, here, at the boundary.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Base of the `type` URIs of our problems.
pub const PROBLEM_BASE: &str = "https://billing-outbox.dev/problems/";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "https://billing-outbox.dev/problems/validation-failed")]
    pub type_: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request. Never echoes personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// One entry per bad field (validation) or per conflicting batch item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `items[2].amount` or `bills[7].recipient.phone`.
    pub field: String,
    /// JSON Pointer (RFC 6901) of the field, e.g. `/items/2/amount`.
    pub pointer: String,
    /// Index of the batch item the error belongs to (batch requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// What is wrong. Never echoes the rejected value.
    pub message: String,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("bad request: {detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {detail}")]
    Conflict {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("unauthorized")]
    Unauthorized,
    #[error("not configured: {0}")]
    NotConfigured(String),
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest { .. } | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotConfigured(_) | Self::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation-failed",
            Self::BadRequest { .. } => "bad-request",
            Self::MalformedJson(_) => "malformed-json",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "payload-too-large",
            Self::NotFound(_) => "not-found",
            Self::Conflict { .. } => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::NotConfigured(_) => "not-configured",
            Self::DatabaseUnavailable(_) => "database-unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let (detail, errors) = match self {
            Self::Validation(errors) => (
                Some(format!("{} field(s) are missing or invalid", errors.len())),
                errors.clone(),
            ),
            Self::BadRequest { detail, errors } | Self::Conflict { detail, errors } => {
                (Some(detail.clone()), errors.clone())
            }
            Self::MalformedJson(why) => {
                (Some(format!("the body is not valid JSON: {why}")), vec![])
            }
            Self::UnsupportedMediaType => (
                Some("send the body as Content-Type: application/json".into()),
                vec![],
            ),
            Self::PayloadTooLarge => (
                Some("the request body exceeds the size limit".into()),
                vec![],
            ),
            Self::NotFound(what) => (Some(format!("{what} not found")), vec![]),
            Self::Unauthorized => (
                Some("send Authorization: Bearer <ADMIN_TOKEN>".into()),
                vec![],
            ),
            Self::NotConfigured(what) => (Some(what.clone()), vec![]),
            Self::DatabaseUnavailable(_) => (
                Some("the database is unavailable; retry later".into()),
                vec![],
            ),
            Self::Internal(_) => (Some("an internal error occurred".into()), vec![]),
        };
        Problem {
            type_: format!("{PROBLEM_BASE}{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

/// Connection-level failures mean "Postgres is unreachable or refusing work": 503.
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown / cannot connect now; 53: resources.
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            return Self::DatabaseUnavailable(e);
        }
        if let sqlx::Error::Database(db) = &e {
            if db.code().as_deref() == Some("40P01") || db.code().as_deref() == Some("40001") {
                return Self::Conflict {
                    detail: "a concurrent request touched the same bills; retry".into(),
                    errors: vec![],
                };
            }
        }
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::DatabaseUnavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let problem = self.problem();
        let mut response = problem_response(&problem);
        if matches!(self, Self::DatabaseUnavailable(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Renders a problem document with its status and content type.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// A problem for a bare status produced by a layer or by the router (404 route, 405, 408, 413).
pub fn problem_for_status(status: StatusCode) -> Problem {
    let (slug, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "this method is not allowed here"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload-too-large",
            "the request body exceeds the size limit",
        ),
        StatusCode::REQUEST_TIMEOUT
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => ("timeout", "the request took too long; retry later"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "send the body as Content-Type: application/json",
        ),
        s if s.is_client_error() => ("bad-request", "the request could not be processed"),
        _ => ("internal", "an internal error occurred"),
    };
    Problem {
        type_: format!("{PROBLEM_BASE}{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: Some(detail.to_owned()),
        errors: vec![],
    }
}
