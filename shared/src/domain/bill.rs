//! Bill lifecycle vocabulary: status and delivery channel, stored as text in Postgres.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `PENDING -> SENDING -> SENT`, or back to `PENDING` on the next channel, or `DEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillStatus {
    Pending,
    Sending,
    Sent,
    Dead,
}

impl BillStatus {
    pub const ALL: [BillStatus; 4] = [Self::Pending, Self::Sending, Self::Sent, Self::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Sending => "SENDING",
            Self::Sent => "SENT",
            Self::Dead => "DEAD",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Sent | Self::Dead)
    }
}

impl FromStr for BillStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown status '{s}' (expected PENDING, SENDING, SENT or DEAD)")
            })
    }
}

impl fmt::Display for BillStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delivery channel a bill is currently on. Email first, SMS as the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Self::Email, Self::Sms];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    /// The channel to fall back to when this one fails, if any.
    pub fn fallback(self) -> Option<Channel> {
        match self {
            Self::Email => Some(Self::Sms),
            Self::Sms => None,
        }
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "email" => Ok(Self::Email),
            "sms" => Ok(Self::Sms),
            _ => Err(format!("unknown channel '{s}' (expected email or sms)")),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
