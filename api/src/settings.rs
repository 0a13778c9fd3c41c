//! Command line and environment of `billing-api`: one typed struct, every option a flag and an
//! environment variable, validated at start with messages that say what to set.

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use shared::config::{DatabaseArgs, KafkaArgs, KeyringArgs};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// billing-api: enqueue bills with their outbox rows and query them over REST.
#[derive(Parser, Debug)]
#[command(name = "billing-api", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Serve the REST API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document, or write it to a file.
    Openapi {
        /// Write the document here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Everything `serve` needs.
#[derive(Args, Clone)]
pub struct Settings {
    /// Address the API listens on.
    #[arg(long = "api-addr", env = "API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Bearer token for `/v1/admin/*`; without it the admin endpoints answer 503.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", value_parser = secret, hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Apply pending migrations before serving.
    #[arg(long = "migrate", env = "API_MIGRATE")]
    pub migrate: bool,
    /// How many times an operator may replay one bill.
    #[arg(long = "max-replays", env = "MAX_REPLAYS", default_value_t = 3)]
    pub max_replays: i32,
    /// Requests taking longer than this many seconds are answered 503.
    #[arg(
        long = "request-timeout-secs",
        env = "REQUEST_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub request_timeout_secs: u64,
    /// Connections that single-bill requests (`POST /v1/bills`) are written on, held by as
    /// many writer tasks, on top of the `DB_MAX_CONNECTIONS` pool the other requests use.
    #[arg(long = "writers", env = "API_WRITERS", default_value_t = crate::state::DEFAULT_WRITERS,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub writers: usize,
    /// Most waiting single bills a writer commits together with one statement (group commit;
    /// 1 writes every bill with its own statement). A writer never waits to fill a group.
    #[arg(long = "write-group", env = "API_WRITE_GROUP", default_value_t = crate::state::DEFAULT_WRITE_GROUP,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub write_group: usize,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub keyring: KeyringArgs,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("migrate", &self.migrate)
            .field("max_replays", &self.max_replays)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("writers", &self.writers)
            .field("write_group", &self.write_group)
            .field("database", &self.database)
            .field("kafka", &self.kafka)
            .field("keyring", &self.keyring)
            .finish()
    }
}
