//! Settings: the command line / environment of the `provider-sim` binary and the [`SimConfig`]
//! that tests and benchmarks in other crates build directly.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use clap::Parser;

/// How the simulated provider behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How long every channel request waits before it is answered (a real provider's latency).
    pub latency: Duration,
    /// Fraction of requests answered with a permanent `422` (after the fixed bounce rules).
    pub failure_rate: f64,
    /// Fraction of requests answered with a transient `503`.
    pub transient_rate: f64,
    /// Seed for the failure dice; `None` seeds from the operating system.
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1000),
            failure_rate: 0.01,
            transient_rate: 0.0,
            seed: None,
        }
    }
}

impl SimConfig {
    /// A provider that answers at once and never fails by chance (bounce rules still apply).
    pub fn instant() -> Self {
        Self {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            transient_rate: 0.0,
            seed: None,
        }
    }

    /// Rejects rates outside `[0, 1]` or summing above 1, naming the variable to fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (0.0..=1.0).contains(&self.failure_rate),
            "SIM_FAILURE_RATE must be between 0 and 1, got {}",
            self.failure_rate
        );
        ensure!(
            (0.0..=1.0).contains(&self.transient_rate),
            "SIM_TRANSIENT_RATE must be between 0 and 1, got {}",
            self.transient_rate
        );
        ensure!(
            self.failure_rate + self.transient_rate <= 1.0 + f64::EPSILON,
            "SIM_FAILURE_RATE + SIM_TRANSIENT_RATE must not exceed 1, got {} + {}",
            self.failure_rate,
            self.transient_rate
        );
        Ok(())
    }
}

/// Command line of the `provider-sim` binary; every option also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "provider-sim",
    version,
    about = "Simulated email/SMS provider: idempotency keys, latency and failure injection",
    long_about = None
)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "PROVIDER_SIM_ADDR", default_value = "127.0.0.1:9090")]
    pub addr: SocketAddr,

    /// Latency of every send, in milliseconds.
    #[arg(long, env = "SIM_LATENCY_MS", default_value_t = 1000)]
    pub latency_ms: u64,

    /// Fraction of sends answered with a permanent 422 (0..=1).
    #[arg(long, env = "SIM_FAILURE_RATE", default_value_t = 0.01)]
    pub failure_rate: f64,

    /// Fraction of sends answered with a transient 503 (0..=1).
    #[arg(long, env = "SIM_TRANSIENT_RATE", default_value_t = 0.0)]
    pub transient_rate: f64,

    /// Seed for deterministic failure decisions.
    #[arg(long, env = "SIM_SEED")]
    pub seed: Option<u64>,
}

impl Settings {
    /// The validated simulation settings.
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let config = SimConfig {
            latency: Duration::from_millis(self.latency_ms),
            failure_rate: self.failure_rate,
            transient_rate: self.transient_rate,
            seed: self.seed,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let settings = Settings::try_parse_from(["provider-sim"]).unwrap();
        assert_eq!(settings.addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(settings.sim_config().unwrap(), SimConfig::default());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused_with_the_variable_name() {
        let config = SimConfig {
            failure_rate: 1.5,
            ..SimConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("SIM_FAILURE_RATE"), "{err}");

        let config = SimConfig {
            failure_rate: 0.6,
            transient_rate: 0.6,
            ..SimConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
