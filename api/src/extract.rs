//! A JSON body extractor whose every rejection is an [`ApiError`], so a malformed body gets the
//! same problem+json envelope as every other error: 415 for a wrong content type, 413 for an
//! oversized body, 400 for bytes that are not JSON, 422 for JSON of the wrong shape.

use crate::error::{ApiError, FieldError};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

/// The request body parsed as JSON into `T`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// True for `application/json` and `application/<anything>+json`, with any parameters.
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        // One pass straight into `T` (no intermediate tree). On failure, syntax wins (400)
        // over shape (422): a shape error may come before a syntax error further on.
        let malformed = |e: &serde_json::Error| {
            // serde_json's syntax messages name a position, never the offending text.
            ApiError::MalformedJson(format!(
                "{} at line {} column {}",
                kind(e),
                e.line(),
                e.column()
            ))
        };
        serde_json::from_slice::<T>(&bytes)
            .map(ApiJson)
            .map_err(|e| {
                if !e.is_data() {
                    return malformed(&e);
                }
                if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    return malformed(&syntax);
                }
                // Data errors can quote the rejected value; say only what was expected.
                let msg = e.to_string();
                // Field-name errors quote only the schema's (or the caller's) field names.
                let names_fields =
                    msg.starts_with("unknown field") || msg.starts_with("missing field");
                let expected = if names_fields {
                    Some(msg.split(" at line ").next().unwrap_or(&msg).to_owned())
                } else {
                    msg.split("expected ")
                        .nth(1)
                        .map(|s| format!("expected {s}"))
                };
                ApiError::Validation(vec![FieldError {
                    field: String::new(),
                    pointer: String::new(),
                    index: None,
                    message: expected.unwrap_or_else(|| "the body has the wrong shape".into()),
                }])
            })
    }
}

fn kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Data => "unexpected data",
    }
}
