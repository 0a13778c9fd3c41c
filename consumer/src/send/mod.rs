//! Sending through providers. A [`Provider`] delivers one message with an idempotency key and
//! says whether a failure is worth retrying ([`SendError::Transient`]) or final
//! ([`SendError::Permanent`]). Error texts never carry personal data.

pub mod http;
pub mod rate_limit;
pub mod simulated;

use futures::future::BoxFuture;
use shared::domain::Channel;

/// One message to deliver. Addresses are in clear: only providers see them.
#[derive(Clone)]
pub enum Message {
    Email {
        to: String,
        subject: String,
        html: String,
        text: String,
    },
    Sms {
        to: String,
        text: String,
    },
}

impl Message {
    pub fn channel(&self) -> Channel {
        match self {
            Self::Email { .. } => Channel::Email,
            Self::Sms { .. } => Channel::Sms,
        }
    }

    /// The clear recipient, to scrub from provider error texts.
    pub fn recipient(&self) -> &str {
        match self {
            Self::Email { to, .. } | Self::Sms { to, .. } => to,
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Message({})", self.channel())
    }
}

/// A delivery the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub message_id: String,
    /// The provider had already delivered this key; nothing was delivered again.
    pub duplicate: bool,
}

/// Why a send failed; the variant is the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: timeouts, connection errors, 429, 5xx.
    #[error("transient: {0}")]
    Transient(String),
    /// Final for this channel: the provider refused the message.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// An email or SMS provider.
pub trait Provider: Send + Sync {
    fn send<'a>(
        &'a self,
        message: &'a Message,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Delivered, SendError>>;
}

/// Removes the recipient (and anything that looks like an address) from a provider's error
/// text and bounds its length, so it is safe to store and to put on the DLT.
pub fn scrub(text: &str, recipient: &str) -> String {
    let mut s = if recipient.is_empty() {
        text.to_owned()
    } else {
        text.replace(recipient, "<recipient>")
    };
    if s.contains('@') {
        s = s
            .split_whitespace()
            .map(|w| if w.contains('@') { "<redacted>" } else { w })
            .collect::<Vec<_>>()
            .join(" ");
    }
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_are_scrubbed_of_recipients() {
        assert_eq!(
            scrub("bounced: jane@bounce.test unknown", "jane@bounce.test"),
            "bounced: <recipient> unknown"
        );
        assert_eq!(scrub("user x@y.z gone", "other"), "user <redacted> gone");
        assert_eq!(scrub(&"e".repeat(500), "").len(), 200);
    }
}
