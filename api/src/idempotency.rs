//! Idempotency keys. A bill's key is the `Idempotency-Key` header, else its `external_id`
//! (batch items: `{Idempotency-Key}:{index}`, else their own `external_id`). The key is unique
//! in `bills`; the stored `request_hash` tells a replay (same body: answer with the first
//! bill's id) from a misuse (other body: 409).

use crate::error::ApiError;
use axum::http::HeaderMap;

pub const HEADER: &str = "idempotency-key";
/// Response header set when an answer replays an earlier one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const MAX_KEY_LEN: usize = 200;

/// The `Idempotency-Key` header, validated: 1 to 200 visible ASCII characters.
pub fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// What a key lookup found for a request with hash `ours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Same key, same body: answer as the first time.
    Replay,
    /// Same key, another body.
    Conflict,
}

pub fn compare(stored: Option<&[u8]>, ours: &[u8]) -> Match {
    if stored == Some(ours) {
        Match::Replay
    } else {
        Match::Conflict
    }
}
