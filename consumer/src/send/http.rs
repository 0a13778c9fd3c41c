//! The HTTP provider client (provider-sim speaks this API): `POST {url}` with a JSON message
//! and an `Idempotency-Key` header. 2xx is delivered (`duplicate: true` means the key was
//! delivered before, which is success too); 429, 408, 5xx, timeouts and connection errors are
//! transient; any other 4xx is a permanent refusal.

use super::{scrub, Delivered, Message, Provider, SendError};
use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    error: String,
}

impl HttpProvider {
    /// `pool` is the number of idle connections kept per host: size it for the bills in flight,
    /// so a burst of sends does not open and close connections.
    pub fn new(url: &str, timeout: Duration, pool: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("failed to build the HTTP provider client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
        })
    }
}

impl Provider for HttpProvider {
    fn send<'a>(
        &'a self,
        message: &'a Message,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Delivered, SendError>> {
        Box::pin(async move {
            let body = match message {
                Message::Email {
                    to,
                    subject,
                    html,
                    text,
                } => {
                    json!({ "to": to, "subject": subject, "html": html, "text": text })
                }
                Message::Sms { to, text } => json!({ "to": to, "text": text }),
            };
            let response = self
                .client
                .post(&self.url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                // reqwest errors name the URL, never the body
                .map_err(|e| {
                    SendError::Transient(if e.is_timeout() {
                        "timeout".into()
                    } else {
                        format!("request failed: {e}")
                    })
                })?;
            let status = response.status();
            if status.is_success() {
                let accepted: Accepted = response.json().await.map_err(|e| {
                    SendError::Transient(format!("unreadable provider answer: {e}"))
                })?;
                return Ok(Delivered {
                    message_id: accepted.message_id,
                    duplicate: accepted.duplicate,
                });
            }
            let detail = response
                .json::<Refused>()
                .await
                .map(|r| r.error)
                .unwrap_or_default();
            let detail = scrub(&detail, message.recipient());
            let text = format!(
                "HTTP {}{}{}",
                status.as_u16(),
                if detail.is_empty() { "" } else { ": " },
                detail
            );
            if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error()
            {
                Err(SendError::Transient(text))
            } else {
                Err(SendError::Permanent(text))
            }
        })
    }
}
