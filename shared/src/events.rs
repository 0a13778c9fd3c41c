//! The JSON value of every record on Kafka, and its event types.

use crate::domain::Channel;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `type` of an outbox row / `event_type` of a record.
pub mod event_type {
    pub const EMAIL_REQUESTED: &str = "bill.email_requested";
    pub const SMS_REQUESTED: &str = "bill.sms_requested";
    pub const DEAD: &str = "bill.dead";
}

/// `aggregatetype` of every outbox row of this service.
pub const AGGREGATE_BILL: &str = "bill";

/// The value of a record on `bills.email`, `bills.sms` or `bills.dlt`. Never carries personal
/// data: the consumer loads and decrypts the recipient from Postgres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillEvent {
    /// The outbox row id.
    pub event_id: Uuid,
    pub event_type: String,
    pub bill_id: Uuid,
    pub channel: Channel,
    /// The bill's send attempts when the event was written.
    pub attempt: i32,
    /// How many times an operator replayed the bill.
    #[serde(default)]
    pub replay_count: i32,
    pub occurred_at: DateTime<Utc>,
    /// Present on dead-letter records only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
}

/// Why a bill died. Reasons are error texts produced by this service, never personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// A short machine-friendly reason: `channels_exhausted`, `poison_record`, `undecryptable`, ...
    pub reason: String,
    /// The last error of each channel tried.
    pub errors: Vec<ChannelError>,
    pub attempts: i32,
    /// Where the record that led here was read, if it came from Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelError {
    pub channel: Channel,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}
