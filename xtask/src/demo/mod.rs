//! `cargo xtask demo`: the whole platform on this machine. Brings up Postgres and a broker
//! (the local environment), migrates, starts provider-sim, api, relay and consumer as separate
//! processes, enqueues a realistic batch through the REST API, shows progress while it drains,
//! prints a summary, and stops everything on Ctrl-C. `--check` turns it into the end-to-end
//! test that CI runs.

mod check;
pub(crate) mod load;
pub(crate) mod services;
pub(crate) mod summary;

use crate::env::{Env, EnvArgs};
use anyhow::Context;
use clap::Args;
use services::Service;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of bills to enqueue.
    #[arg(long, default_value_t = 10_000)]
    pub bills: usize,
    /// Bills per `POST /v1/bills/batch`.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Simulated provider latency (provider-sim's SIM_LATENCY_MS).
    #[arg(long, default_value_t = 1_000)]
    pub latency_ms: u64,
    /// Random permanent failure rate of provider-sim (SIM_FAILURE_RATE).
    #[arg(long, default_value_t = 0.01)]
    pub failure_rate: f64,
    /// Do not add recipients that always bounce (email) or always fail (both channels).
    #[arg(long)]
    pub no_injected_failures: bool,
    /// Build and run release binaries (slower first build, faster run).
    #[arg(long)]
    pub release: bool,
    /// Exit after the summary instead of keeping the platform up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Verify the end-to-end guarantees after the drain and fail if one does not hold (implies --exit).
    #[arg(long)]
    pub check: bool,
    /// Give up when the batch has not drained after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Seed of the generated batch.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    #[command(flatten)]
    pub env: EnvArgs,
}

impl DemoArgs {
    /// The end-to-end test CI runs: a few thousand bills, fast provider, failures injected.
    pub fn e2e(env: EnvArgs) -> Self {
        Self {
            bills: 3_000,
            batch: 500,
            latency_ms: 20,
            failure_rate: 0.02,
            no_injected_failures: false,
            release: false,
            exit: true,
            check: true,
            timeout_secs: 600,
            seed: 7,
            env,
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin_dir = services::build(args.release)?;
    let env = Env::start(&args.env).await?;
    env.describe();
    let mut running = Vec::new();
    let result = tokio::select! {
        r = run_platform(&args, &env, &bin_dir, &mut running) => r,
        _ = tokio::signal::ctrl_c() => { eprintln!("\nxtask: Ctrl-C: stopping"); Ok(()) }
    };
    for svc in running.into_iter().rev() {
        svc.stop(Duration::from_secs(20)).await;
    }
    env.stop().await;
    result
}

async fn run_platform(
    args: &DemoArgs,
    env: &Env,
    bin_dir: &std::path::Path,
    running: &mut Vec<Service>,
) -> anyhow::Result<()> {
    let database_url = demo_database(&env.postgres.url).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/demo")
        .join(&run_id);
    std::fs::create_dir_all(&log_dir)?;
    let keys = std::env::var("BILLING_ENCRYPTION_KEYS")
        .unwrap_or_else(|_| shared::crypto::Keyring::generate_spec("demo"));
    let admin_token =
        std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| format!("{:032x}", rand::random::<u128>()));
    let port = || crate::env::free_port();
    let (api_addr, relay_addr, consumer_addr, sim_addr) = (
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
    );
    let common = [
        ("DATABASE_URL", database_url.clone()),
        ("KAFKA_BROKERS", env.broker.bootstrap.clone()),
        ("BILLING_ENCRYPTION_KEYS", keys),
    ];
    let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        common
            .iter()
            .cloned()
            .chain(extra.iter().cloned())
            .collect()
    };

    let migrate = tokio::process::Command::new(bin_dir.join("billing-api"))
        .arg("migrate")
        .envs(with(&[]))
        .status()
        .await
        .context("failed to run billing-api migrate")?;
    anyhow::ensure!(migrate.success(), "billing-api migrate failed");

    let sim_env = [
        ("PROVIDER_SIM_ADDR", sim_addr.clone()),
        ("SIM_LATENCY_MS", args.latency_ms.to_string()),
        ("SIM_FAILURE_RATE", args.failure_rate.to_string()),
    ];
    running.push(Service::spawn(
        bin_dir,
        "provider-sim",
        &[],
        &sim_env,
        &log_dir,
    )?);
    running.push(Service::spawn(
        bin_dir,
        "billing-api",
        &[],
        &with(&[("API_ADDR", api_addr.clone()), ("ADMIN_TOKEN", admin_token)]),
        &log_dir,
    )?);
    running.push(Service::spawn(
        bin_dir,
        "billing-relay",
        &[],
        &with(&[("RELAY_ADMIN_ADDR", relay_addr.clone())]),
        &log_dir,
    )?);
    running.push(Service::spawn(
        bin_dir,
        "billing-consumer",
        &[],
        &with(&[
            ("CONSUMER_ADMIN_ADDR", consumer_addr.clone()),
            ("CONSUMER_GROUP", format!("billing-consumer-{run_id}")),
            ("EMAIL_PROVIDER_URL", format!("http://{sim_addr}/v1/email")),
            ("SMS_PROVIDER_URL", format!("http://{sim_addr}/v1/sms")),
            ("SWEEP_INTERVAL_SECS", "5".into()),
        ]),
        &log_dir,
    )?);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let api = format!("http://{api_addr}");
    let sim = format!("http://{sim_addr}");
    for (svc, url) in running.iter_mut().zip([
        format!("{sim}/healthz"),
        format!("{api}/readyz"),
        format!("http://{relay_addr}/readyz"),
        format!("http://{consumer_addr}/readyz"),
    ]) {
        services::wait_ready(&http, svc, &url).await?;
    }
    eprintln!("xtask: platform up; logs in {}", log_dir.display());

    let bills = load::generate(&run_id, args.bills, !args.no_injected_failures, args.seed);
    let bars = summary::Bars::new(args.bills as u64, args.check && std::env::var("CI").is_ok());
    let started = Instant::now();
    // The first bill goes alone, with a traceparent of our own, so its trace can be followed
    // through the logs (the check does); the rest go in batches.
    let (first, rest) = bills.split_first().context("no bills to enqueue")?;
    let traced = load::enqueue_traced(&http, &api, first).await?;
    bars.accepted.inc(1);
    load::enqueue(&http, &api, rest, args.batch, |n| {
        bars.accepted.inc(n as u64)
    })
    .await?;
    let counts = summary::drain(
        &http,
        &api,
        args.bills as i64,
        &bars,
        Duration::from_secs(args.timeout_secs),
        || running.iter_mut().try_for_each(Service::check_alive),
    )
    .await?;
    bars.finish();
    let seconds = started.elapsed().as_secs_f64();

    let pool = sqlx::PgPool::connect(&database_url).await?;
    let (p50, p99) = summary::latency_ms(&pool).await?;
    let provider = summary::fetch_provider(&http, &sim).await?;
    let s = summary::Summary {
        counts,
        provider,
        seconds,
        bills_per_second: args.bills as f64 / seconds,
        enqueue_to_send_p50_ms: p50,
        enqueue_to_send_p99_ms: p99,
    };
    summary::print(&s, &api);
    std::fs::write(log_dir.join("summary.json"), serde_json::to_vec_pretty(&s)?)?;

    if args.check {
        let failed =
            check::run(&pool, &env.broker.bootstrap, &bills, &s, &traced, &log_dir).await?;
        anyhow::ensure!(failed == 0, "{failed} end-to-end check(s) failed");
    } else if !args.exit {
        println!(
            "  Follow one bill: its trace id {} is on the relay and consumer log lines of bill {} in {}",
            traced.trace_id,
            traced.id,
            log_dir.display()
        );
        println!("  The platform keeps running; press Ctrl-C to stop everything.");
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// The database the demo runs in: `DATABASE_URL` as given when the user set it, otherwise a
/// fresh `billing_demo` database on the environment's server.
async fn demo_database(server_url: &str) -> anyhow::Result<String> {
    if std::env::var("DATABASE_URL").is_ok_and(|u| u == server_url) {
        return Ok(server_url.to_owned());
    }
    crate::env::fresh_database(server_url, "billing_demo").await
}
