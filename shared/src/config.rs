//! Configuration pieces every binary flattens into its own `clap` settings struct. Each option
//! is a flag and an environment variable; problems are reported at start with what to set.

use crate::crypto::Keyring;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// Postgres connection settings.
#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL",
          default_value = "postgres://postgres@127.0.0.1:5432/billing", value_parser = secret,
          hide_default_value = false, hide_env_values = true)]
    pub database_url: SecretString,
    /// Maximum connections in the pool.
    #[arg(
        long = "db-max-connections",
        env = "DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_max_connections: u32,
}

impl DatabaseArgs {
    pub fn url(&self) -> &str {
        self.database_url.expose_secret()
    }
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &redact_url(self.url()))
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

/// Shows scheme, host and database of a URL, never its credentials.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Kafka bootstrap servers and topic names.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    #[command(flatten)]
    pub topics: Topics,
}

/// Topic names. Every publication goes through the outbox, which stores the topic per row.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Topic of e-mail delivery requests.
    #[arg(
        long = "topic-email",
        env = "TOPIC_EMAIL",
        default_value = "bills.email"
    )]
    pub email: String,
    /// Topic of SMS delivery requests.
    #[arg(long = "topic-sms", env = "TOPIC_SMS", default_value = "bills.sms")]
    pub sms: String,
    /// Dead-letter topic.
    #[arg(long = "topic-dlt", env = "TOPIC_DLT", default_value = "bills.dlt")]
    pub dlt: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            email: "bills.email".into(),
            sms: "bills.sms".into(),
            dlt: "bills.dlt".into(),
        }
    }
}

impl Topics {
    pub fn for_channel(&self, channel: crate::domain::Channel) -> &str {
        match channel {
            crate::domain::Channel::Email => &self.email,
            crate::domain::Channel::Sms => &self.sms,
        }
    }
}

/// The encryption keyring, from `BILLING_ENCRYPTION_KEYS`.
#[derive(Args, Clone)]
pub struct KeyringArgs {
    /// Keyring `kid:base64(32 bytes)[,kid:...]`; the first key encrypts, all decrypt.
    #[arg(long = "encryption-keys", env = "BILLING_ENCRYPTION_KEYS", value_parser = secret,
          hide_env_values = true)]
    pub encryption_keys: Option<SecretString>,
}

impl fmt::Debug for KeyringArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyringArgs(***)")
    }
}

impl KeyringArgs {
    /// Builds the keyring, or explains what to set.
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        let spec = self
            .encryption_keys
            .as_ref()
            .map(|s| s.expose_secret())
            .unwrap_or("");
        Keyring::parse(spec).map_err(|e| anyhow::anyhow!("invalid encryption keyring: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn a_missing_keyring_says_what_to_set() {
        let err = KeyringArgs {
            encryption_keys: None,
        }
        .keyring()
        .unwrap_err()
        .to_string();
        assert!(err.contains("BILLING_ENCRYPTION_KEYS"), "{err}");
    }
}
