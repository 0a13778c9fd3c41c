//! The local environment: Postgres and a Kafka-protocol broker, reused when the configured
//! ones answer, otherwise started here and torn down afterwards. No Docker needed.

mod broker;
mod postgres;

use anyhow::Context;
use clap::{Args, ValueEnum};
use std::process::Stdio;

pub use broker::Broker;
pub use postgres::{free_port, fresh_database, Postgres};

/// Which broker to start when `KAFKA_BROKERS` does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// tansu when installed (see README), else the in-process librdkafka mock cluster.
    Auto,
    /// librdkafka's mock cluster, in this process, on real TCP ports. Fast; bounded log.
    Mock,
    /// A tansu broker process (memory storage).
    Tansu,
}

#[derive(Args, Debug, Clone)]
pub struct EnvArgs {
    /// Broker to start when KAFKA_BROKERS is unset or does not answer.
    #[arg(long, value_enum, default_value = "mock", env = "XTASK_BROKER")]
    pub broker: BrokerKind,
    /// Partitions of each topic created here.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Always start a throwaway Postgres, even when one answers (proves the bare-machine path).
    #[arg(long, env = "XTASK_FRESH_POSTGRES")]
    pub fresh_postgres: bool,
}

/// A running environment; dropping it stops what it started.
pub struct Env {
    pub postgres: Postgres,
    pub broker: Broker,
}

impl Env {
    pub async fn start(args: &EnvArgs) -> anyhow::Result<Self> {
        let postgres = Postgres::ensure(args.fresh_postgres).await?;
        let broker = Broker::ensure(args.broker, args.partitions).await?;
        Ok(Self { postgres, broker })
    }

    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.postgres.url.clone()),
            ("KAFKA_BROKERS", self.broker.bootstrap.clone()),
        ]
    }

    pub fn describe(&self) {
        eprintln!(
            "xtask: Postgres  {} ({})",
            self.postgres.url,
            self.postgres.origin()
        );
        eprintln!(
            "xtask: Kafka     {} ({})",
            self.broker.bootstrap,
            self.broker.origin()
        );
    }

    pub async fn stop(self) {
        self.broker.stop().await;
        self.postgres.stop().await;
    }
}

/// Runs `cmd` inside the environment (or waits for Ctrl-C) and returns its exit code.
pub async fn run_with(args: EnvArgs, cmd: Vec<String>) -> anyhow::Result<i32> {
    let env = Env::start(&args).await?;
    env.describe();
    let code = if cmd.is_empty() {
        for (k, v) in env.vars() {
            println!("export {k}={v}");
        }
        eprintln!("xtask: environment up; Ctrl-C to tear it down");
        let _ = tokio::signal::ctrl_c().await;
        0
    } else {
        let mut child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .envs(env.vars())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("failed to start {}", cmd[0]))?;
        tokio::select! {
            status = child.wait() => status?.code().unwrap_or(1),
            _ = tokio::signal::ctrl_c() => { let _ = child.kill().await; 130 }
        }
    };
    env.stop().await;
    Ok(code)
}
