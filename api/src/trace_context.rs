//! W3C Trace Context (`traceparent`). The API continues an incoming trace or starts a new one,
//! stores the resulting `traceparent` with the bill and in its outbox row's headers (so one
//! trace follows a bill from the API call to the send), and returns it as a response header.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub const TRACEPARENT: &str = "traceparent";

/// The trace context of one request: version 00, our own span id as the parent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
}

impl TraceContext {
    /// Continues `incoming` when it is a valid `traceparent`, else starts a new sampled trace.
    pub fn continue_or_start(incoming: Option<&str>) -> Self {
        let span_id = random_hex(8);
        match incoming.and_then(parse) {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
            },
            None => Self {
                trace_id: random_hex(16),
                span_id,
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Parses `version-traceid-parentid-flags`; returns the trace id and flags.
fn parse(s: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (parts[0], parts[1], parts[2], parts[3]);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version ff is invalid; version 00 has exactly four parts; later versions may add more.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.len() != 4) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace_id.to_owned(), flags.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// Middleware: puts the [`TraceContext`] into the request extensions and answers with it.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let incoming = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let ctx = TraceContext::continue_or_start(incoming);
    let value = HeaderValue::from_str(&ctx.traceparent()).ok();
    tracing::Span::current().record("trace_id", ctx.trace_id.as_str());
    req.extensions_mut().insert(ctx);
    let mut response = next.run(req).await;
    if let Some(v) = value {
        response.headers_mut().insert(TRACEPARENT, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_incoming_traceparent_keeps_its_trace_id_with_a_new_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::continue_or_start(Some(tp));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.traceparent().len(), 55);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::continue_or_start(Some(bad));
            assert_ne!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(parse(&ctx.traceparent()).is_some());
        }
    }
}
