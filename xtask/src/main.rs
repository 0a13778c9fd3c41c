//! Developer tasks for billing-outbox, run as `cargo xtask <task>`:
//!
//! - `env [-- CMD ...]`: make sure a Postgres and a Kafka-protocol broker answer (use
//!   `DATABASE_URL` / `KAFKA_BROKERS` when they do, otherwise start throwaway ones), create the
//!   topics, print the settings, run CMD with them (or wait for Ctrl-C), then tear down.
//! - `test`: `env` + the workspace test suite. This is what `.ci/run` calls.
//! - `demo`: `env` + every service + a realistic batch, with progress and a summary.
//! - `canary`: the platform with canary recipients; searches every place for them in clear.
//! - `faults`: the fault-test suite (SIGKILL, broker outage, Postgres restart, 3x3, SIGSTOP).

mod canary;
mod demo;
mod env;
mod faults;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "xtask", about = "billing-outbox developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Start (or reuse) Postgres and a broker, run a command with DATABASE_URL/KAFKA_BROKERS set.
    Env {
        #[command(flatten)]
        env: env::EnvArgs,
        /// Command to run inside the environment; without one, waits for Ctrl-C.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Run the whole test suite inside the local environment.
    Test {
        #[command(flatten)]
        env: env::EnvArgs,
        /// Skip the end-to-end run of the real binaries after the test suite.
        #[arg(long)]
        no_e2e: bool,
        /// Extra arguments for the test runner (e.g. a filter; skips the end-to-end run).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the whole platform on a realistic batch and print a summary.
    Demo(demo::DemoArgs),
    /// Leak test: canary recipients through the platform, then search every table, log line,
    /// topic record, error body and metrics page for them in clear.
    Canary(canary::CanaryArgs),
    /// Fault tests: the real binaries under SIGKILL, broker outage, Postgres restart, SIGSTOP.
    Faults(faults::FaultArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.task {
            Task::Env { env, cmd } => env::run_with(env, cmd).await,
            Task::Test { env, args, no_e2e } => {
                let mut cmd = test_command();
                let filtered = !args.is_empty();
                cmd.extend(args);
                let code = env::run_with(env.clone(), cmd).await?;
                if code != 0 || no_e2e || filtered {
                    return Ok(code);
                }
                eprintln!("xtask: end-to-end run of the real binaries (demo --check)");
                demo::run(demo::DemoArgs::e2e(env)).await?;
                eprintln!("xtask: fault tests, quick variant (faults --quick)");
                faults_exit_code(faults::run(faults::FaultArgs::quick()).await?)
            }
            Task::Demo(args) => demo::run(args).await.map(|()| 0),
            Task::Faults(args) => faults_exit_code(faults::run(args).await?),
            Task::Canary(args) => canary::run(args).await.map(|failed| i32::from(failed > 0)),
        }
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn faults_exit_code(failed: usize) -> anyhow::Result<i32> {
    Ok(i32::from(failed > 0))
}

/// `cargo nextest run` when installed (one process per test, clearer output), else `cargo test`.
fn test_command() -> Vec<String> {
    let has_nextest = std::process::Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let words: &[&str] = if has_nextest {
        &["cargo", "nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        &["cargo", "test", "--workspace", "--no-fail-fast"]
    };
    words.iter().map(|s| s.to_string()).collect()
}
