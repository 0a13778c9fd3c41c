//! The consumer's settings: every option is a flag and an environment variable, validated at
//! start with messages that say what to set.

use clap::{Args, Parser, Subcommand};
use shared::config::{DatabaseArgs, KafkaArgs, KeyringArgs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// billing-consumer: claims bills from `bills.email` / `bills.sms`, sends them, falls back
/// email -> SMS -> dead-letter, and sweeps expired leases.
#[derive(Parser, Debug, Clone)]
#[command(name = "billing-consumer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
}

/// Everything [`crate::run`] needs.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// Apply pending migrations before consuming.
    #[arg(long = "migrate", env = "CONSUMER_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long = "admin-addr",
        env = "CONSUMER_ADMIN_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub admin_addr: SocketAddr,
    /// Kafka consumer group.
    #[arg(
        long = "group",
        env = "CONSUMER_GROUP",
        default_value = "billing-consumer"
    )]
    pub group: String,
    /// Bills in flight at once over all partitions (bounds memory; intake pauses when full).
    #[arg(long = "max-in-flight", env = "MAX_IN_FLIGHT", default_value_t = 2500)]
    pub max_in_flight: usize,
    /// Lease of a claimed bill; the sweeper hands back bills whose lease expired.
    #[arg(long = "lease-secs", env = "LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// Lease expiries on one channel before the bill moves to the next channel or DEAD.
    #[arg(
        long = "max-lease-expiries",
        env = "MAX_LEASE_EXPIRIES",
        default_value_t = 3
    )]
    pub max_lease_expiries: i32,
    /// Retries of a transient provider error before the channel counts as failed.
    #[arg(
        long = "email-max-retries",
        env = "EMAIL_MAX_RETRIES",
        default_value_t = 2
    )]
    pub email_max_retries: u32,
    /// Ceiling on provider calls per minute, per channel, across the process (unset: unlimited).
    #[arg(long = "send-rate-per-min", env = "SEND_RATE_PER_MIN")]
    pub send_rate_per_min: Option<u32>,
    /// HTTP email provider (provider-sim: http://127.0.0.1:9090/v1/email). Unset: in-process simulator.
    #[arg(long = "email-provider-url", env = "EMAIL_PROVIDER_URL")]
    pub email_provider_url: Option<String>,
    /// HTTP SMS provider (provider-sim: http://127.0.0.1:9090/v1/sms). Unset: in-process simulator.
    #[arg(long = "sms-provider-url", env = "SMS_PROVIDER_URL")]
    pub sms_provider_url: Option<String>,
    /// Timeout of one provider request.
    #[arg(
        long = "provider-timeout-ms",
        env = "PROVIDER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub provider_timeout_ms: u64,
    /// Latency of the in-process simulated provider.
    #[arg(
        long = "sim-latency-ms",
        env = "SIM_LATENCY_MS",
        default_value_t = 1000
    )]
    pub sim_latency_ms: u64,
    /// Fraction (0..=1) of in-process simulated sends that fail permanently.
    #[arg(
        long = "sim-failure-rate",
        env = "SIM_FAILURE_RATE",
        default_value_t = 0.01
    )]
    pub sim_failure_rate: f64,
    /// Directory whose email.subject.txt, email.html, email.txt, sms.txt override the built-in templates.
    #[arg(long = "template-dir", env = "TEMPLATE_DIR")]
    pub template_dir: Option<PathBuf>,
    /// How often the sweeper looks for expired leases.
    #[arg(
        long = "sweep-interval-secs",
        env = "SWEEP_INTERVAL_SECS",
        default_value_t = 10
    )]
    pub sweep_interval_secs: u64,
    /// How long a shutdown waits for in-flight bills before leaving them to the sweeper.
    #[arg(
        long = "shutdown-grace-secs",
        env = "SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
}

impl Settings {
    /// Checks what clap cannot, with messages that say what to set.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_in_flight >= 1, "MAX_IN_FLIGHT must be at least 1");
        anyhow::ensure!(self.lease_secs >= 1, "LEASE_SECS must be at least 1");
        anyhow::ensure!(
            self.max_lease_expiries >= 1,
            "MAX_LEASE_EXPIRIES must be at least 1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sim_failure_rate),
            "SIM_FAILURE_RATE must be between 0 and 1"
        );
        anyhow::ensure!(
            self.send_rate_per_min != Some(0),
            "SEND_RATE_PER_MIN must be positive (unset it for no limit)"
        );
        anyhow::ensure!(
            self.sweep_interval_secs >= 1,
            "SWEEP_INTERVAL_SECS must be at least 1"
        );
        for url in [&self.email_provider_url, &self.sms_provider_url]
            .into_iter()
            .flatten()
        {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "provider URLs must start with http:// or https:// (got {url})"
            );
        }
        // A lease shorter than the longest send makes the sweeper hand back bills that are
        // still being sent: harmless (the idempotency key holds) but wasteful.
        let longest_send_ms = self.provider_timeout_ms * (u64::from(self.email_max_retries) + 1);
        if self.lease_secs * 1000 <= longest_send_ms {
            tracing::warn!(
                lease_secs = self.lease_secs,
                longest_send_ms,
                "LEASE_SECS is not longer than PROVIDER_TIMEOUT_MS x (EMAIL_MAX_RETRIES + 1); raise it"
            );
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}
