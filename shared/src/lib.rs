//! Everything the billing-outbox binaries share: domain newtypes, configuration pieces,
//! the encryption keyring, masking, the database migrator, the outbox writer, Kafka client
//! builders, telemetry and the small ops server (`/healthz`, `/readyz`, `/metrics`).
//!
//! `shared` never depends on `api`, `relay` or `consumer`.

pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod events;
pub mod kafka;
pub mod mask;
pub mod ops;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;

/// Migrations of the billing database; every binary can apply them at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
