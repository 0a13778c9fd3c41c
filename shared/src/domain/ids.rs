//! Identifiers. Bills and outbox events use UUIDv7: time-ordered, so B-tree inserts stay
//! at the right edge of the index and ids sort by creation time.

use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_v7_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the canonical hyphenated form.
            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                Uuid::parse_str(raw)
                    .map(Self)
                    .map_err(|_| ValidationError::new("must be a UUID"))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_v7_id!(
    /// The id of a bill; also the Kafka key of every event about it.
    BillId
);
uuid_v7_id!(
    /// The id of an outbox row, published as the event's `event_id`.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_version_7_and_time_ordered() {
        let a = BillId::new();
        let b = BillId::new();
        assert_eq!(a.0.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(BillId::parse("not-a-uuid").is_err());
        let id = BillId::new();
        assert_eq!(BillId::parse(&id.to_string()).unwrap(), id);
    }
}
