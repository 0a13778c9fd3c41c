//! Domain newtypes. Each has a validating `parse` that returns a [`ValidationError`] saying
//! what is wrong, so the API can list every bad field at once.
//!
//! PII newtypes (`EmailAddress`, `PhoneNumber`, `PersonName`) mask themselves in `Debug` and
//! `Display`, so personal data cannot reach a log line by accident.

mod bill;
mod email;
mod ids;
mod money;
mod name;
mod phone;

pub use bill::{BillStatus, Channel};
pub use email::EmailAddress;
pub use ids::{BillId, EventId};
pub use money::{Currency, MinorAmount};
pub use name::PersonName;
pub use phone::PhoneNumber;

/// Why a value was rejected. The message is safe to show to the caller: it never echoes
/// the rejected personal data back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
