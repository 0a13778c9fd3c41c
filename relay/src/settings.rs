//! Command line and environment settings of `billing-relay`, validated at start.

use crate::RelayOptions;
use clap::{Args, Parser, Subcommand};
use shared::config::{DatabaseArgs, KafkaArgs};
use std::net::SocketAddr;
use std::time::Duration;

/// Publishes committed outbox rows to Kafka with an idempotent producer.
#[derive(Parser, Debug)]
#[command(name = "billing-relay", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
}

/// Everything the relay reads from flags or the environment.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "RELAY_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: SocketAddr,
    /// Outbox rows per chunk: read, sent and settled in one transaction.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 5000)]
    pub batch_size: i64,
    /// Chunks read ahead (each on its own connection) while one awaits its delivery reports.
    #[arg(long, env = "RELAY_READ_AHEAD", default_value_t = 2)]
    pub read_ahead: usize,
    /// Fallback poll interval when no NOTIFY arrives (milliseconds).
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,
    /// Published rows older than this many hours are deleted.
    #[arg(long, env = "RELAY_RETENTION_HOURS", default_value_t = 24)]
    pub retention_hours: u64,
    /// Rows deleted per retention statement.
    #[arg(long, env = "RELAY_RETENTION_BATCH", default_value_t = 5000)]
    pub retention_batch: i64,
    /// Seconds between retention runs.
    #[arg(long, env = "RELAY_RETENTION_INTERVAL_SECS", default_value_t = 60)]
    pub retention_interval_secs: u64,
    /// Failed attempts of one row after which every further failure is reported as an
    /// error (the row keeps being retried at the capped interval; it is never dropped).
    #[arg(long, env = "RELAY_MAX_PUBLISH_ATTEMPTS", default_value_t = 10)]
    pub max_publish_attempts: i32,
    /// How long the producer keeps trying to deliver a record before reporting it failed.
    #[arg(long, env = "RELAY_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub message_timeout_ms: u64,
    /// Cap of the back-off after a batch failed for a broker reason (milliseconds).
    #[arg(long, env = "RELAY_MAX_BACKOFF_MS", default_value_t = 5_000)]
    pub max_backoff_ms: u64,
    /// Cap of the retry interval of a row that failed permanently (seconds).
    #[arg(long, env = "RELAY_ROW_RETRY_CAP_SECS", default_value_t = 300)]
    pub row_retry_cap_secs: u64,
    /// Commit chunks with `synchronous_commit = off`: no WAL flush wait per chunk (lower
    /// latency). If Postgres itself crashes, the position of the last few hundred
    /// milliseconds can be lost and those rows are published again (at least once; consumers
    /// deduplicate). A relay crash loses nothing either way.
    #[arg(long, env = "RELAY_ASYNC_COMMIT")]
    pub async_commit: bool,
    /// Apply pending migrations before starting.
    #[arg(long, env = "RELAY_MIGRATE")]
    pub migrate: bool,
}

impl Settings {
    /// Rejects values the relay cannot work with, saying what to set.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=50_000).contains(&self.batch_size),
            "RELAY_BATCH_SIZE must be between 1 and 50000, got {}",
            self.batch_size
        );
        anyhow::ensure!(
            self.read_ahead <= 16,
            "RELAY_READ_AHEAD must be between 0 and 16, got {}",
            self.read_ahead
        );
        anyhow::ensure!(
            self.poll_interval_ms > 0,
            "RELAY_POLL_INTERVAL_MS must be positive"
        );
        anyhow::ensure!(
            self.retention_batch > 0,
            "RELAY_RETENTION_BATCH must be positive"
        );
        anyhow::ensure!(
            self.max_publish_attempts > 0,
            "RELAY_MAX_PUBLISH_ATTEMPTS must be positive"
        );
        anyhow::ensure!(
            self.message_timeout_ms >= 100,
            "RELAY_MESSAGE_TIMEOUT_MS must be at least 100"
        );
        anyhow::ensure!(
            !self.kafka.kafka_brokers.trim().is_empty(),
            "KAFKA_BROKERS must not be empty"
        );
        Ok(())
    }

    /// The library options these settings describe.
    pub fn options(&self) -> RelayOptions {
        RelayOptions {
            brokers: self.kafka.kafka_brokers.clone(),
            batch_size: self.batch_size,
            read_ahead: self.read_ahead,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            retention_age: Duration::from_secs(self.retention_hours * 3600),
            retention_batch: self.retention_batch,
            retention_interval: Duration::from_secs(self.retention_interval_secs),
            max_publish_attempts: self.max_publish_attempts,
            message_timeout: Duration::from_millis(self.message_timeout_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            row_retry_cap: Duration::from_secs(self.row_retry_cap_secs),
            async_commit: self.async_commit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let cli = Cli::try_parse_from(["billing-relay"]).unwrap();
        cli.settings.validate().unwrap();
        assert_eq!(cli.settings.batch_size, 5000);
        assert_eq!(cli.settings.admin_addr.to_string(), "127.0.0.1:9101");
        assert!(cli.command.is_none());
    }

    #[test]
    fn migrate_is_a_subcommand() {
        let cli = Cli::try_parse_from(["billing-relay", "migrate"]).unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
    }

    #[test]
    fn a_zero_batch_size_says_what_to_set() {
        let cli = Cli::try_parse_from(["billing-relay", "--batch-size", "0"]).unwrap();
        let err = cli.settings.validate().unwrap_err().to_string();
        assert!(err.contains("RELAY_BATCH_SIZE"), "{err}");
    }
}
