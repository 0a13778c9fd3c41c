//! End-to-end benchmark (issue 5): a backlog of bills drained by the real release binaries,
//! each its own process: `billing-relay` -> Kafka (tansu) -> `billing-consumer` ->
//! `provider-sim`.
//!
//! 1. Starts a tansu broker process on a free port (or uses `KAFKA_BROKERS`), creates the
//!    topics, creates and migrates a fresh database `bench_e2e_<pid>` on the server of
//!    `DATABASE_URL`, starts provider-sim.
//! 2. Writes N realistic bills through the API's own write path without HTTP: each JSON bill
//!    is validated with `billing_api::validation::parse_bill`, encrypted and turned into its
//!    outbox row by `billing_api::write::PreparedBill::new`, and inserted by
//!    `billing_api::write::insert_batch` (bill + items + outbox row, one statement per batch).
//!    The API's own CPU stays out of the measurement, and the backlog is ready at the start.
//! 3. Starts relay and consumer (the clock starts here) and polls Postgres every 500 ms until
//!    every bill is SENT or DEAD: time to drain, bills/s overall and between 10 % and 90 %
//!    done, the consumer's peak RSS (max sampled VmRSS and VmHWM at the end), provider-sim's
//!    counters, and the CPU seconds of each process, to show where time goes.
//!
//! With `--rate-per-min N` it is the rate-limit run instead: the consumer gets
//! `SEND_RATE_PER_MIN=N`, the backlog is sized to outlast the run, provider-sim's `/stats` is
//! sampled every second, and the email requests per minute are measured over full minutes
//! after a warm-up; the run stops after the window, without draining.
//!
//! Needs the release binaries; it builds them first (`--no-build` skips that):
//! `cargo build --release -p billing-relay -p billing-consumer -p provider-sim`.
//! Run: `cargo run --release -p bench --bin e2e -- --help`.

use anyhow::{bail, Context};
use billing_api::validation::{parse_bill, Loc};
use billing_api::write::{insert_batch, PreparedBill};
use clap::Parser;
use provider_sim::Stats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shared::crypto::Keyring;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Parser, Debug)]
#[command(
    name = "e2e",
    about = "End-to-end drain of a bill backlog by relay, consumer and provider-sim processes"
)]
struct Args {
    /// Server to create the benchmark database on (any database of it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Kafka bootstrap servers; a tansu process started by the benchmark when unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// tansu binary (used when KAFKA_BROKERS is unset).
    #[arg(long, env = "TANSU_BIN")]
    tansu_bin: Option<PathBuf>,
    /// Bills in the backlog. Default: 100,000; with --rate-per-min, enough to outlast the run.
    #[arg(long)]
    bills: Option<usize>,
    /// provider-sim's latency (SIM_LATENCY_MS).
    #[arg(long, default_value_t = 1000)]
    latency_ms: u64,
    /// provider-sim's random permanent failure rate (SIM_FAILURE_RATE).
    #[arg(long, default_value_t = 0.01)]
    failure_rate: f64,
    /// Rate-limit run: the consumer's SEND_RATE_PER_MIN.
    #[arg(long)]
    rate_per_min: Option<u32>,
    /// Rate-limit run: seconds before the measurement window opens.
    #[arg(long, default_value_t = 30)]
    warmup_secs: u64,
    /// Rate-limit run: full minutes measured after the warm-up.
    #[arg(long, default_value_t = 2)]
    minutes: u64,
    /// The consumer's MAX_IN_FLIGHT.
    #[arg(long, default_value_t = 2000)]
    in_flight: usize,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Bills per insert statement while writing the backlog.
    #[arg(long, default_value_t = 2000)]
    insert_batch: usize,
    /// Give up when the backlog has not drained after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Directory of the release binaries (default: <target>/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build --release` for the three binaries first.
    #[arg(long)]
    no_build: bool,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
    /// Seed of the generated bills.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

const RATE_TARGET: f64 = 1_700.0;
const MILLION_SECS_TARGET: f64 = 600.0;
const RSS_TARGET_MB: f64 = 256.0;
const TOPICS: [&str; 3] = ["bills.email", "bills.sms", "bills.dlt"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let target = target.canonicalize().unwrap_or(target);
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| target.join("release"));
    if !args.no_build {
        build_binaries()?;
    }
    for b in ["billing-relay", "billing-consumer", "provider-sim"] {
        anyhow::ensure!(
            bin_dir.join(b).exists(),
            "{} missing: cargo build --release -p billing-relay -p billing-consumer -p provider-sim",
            bin_dir.join(b).display()
        );
    }
    let log_dir = target
        .join("bench-e2e")
        .join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;

    let scratch = bench::ScratchDb::create(&args.database_url, "bench_e2e").await?;
    let (server, db) = (&scratch.server, scratch.name.as_str());
    let mut procs = Procs::default();
    let result = run(&args, server, db, &bin_dir, &log_dir, &mut procs).await;
    procs.stop_all().await;
    scratch.finish(args.keep_db).await?;
    println!("logs: {}", log_dir.display());
    result
}

fn build_binaries() -> anyhow::Result<()> {
    eprintln!("e2e: cargo build --release -p billing-relay -p billing-consumer -p provider-sim");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "billing-relay",
            "-p",
            "billing-consumer",
            "-p",
            "provider-sim",
        ])
        .status()
        .context("failed to run cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed");
    Ok(())
}

/// The processes the benchmark started, stopped in reverse order at the end or on error.
#[derive(Default)]
struct Procs(Vec<Proc>);

struct Proc {
    name: &'static str,
    log: PathBuf,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

impl Procs {
    fn spawn(
        &mut self,
        program: &Path,
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<u32> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", program.display()))?;
        let pid = child.id().unwrap_or(0);
        self.0.push(Proc { name, log, child });
        Ok(pid)
    }

    /// Fails when a started process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.0 {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited with {status}; see {}", p.name, p.log.display());
            }
        }
        Ok(())
    }

    /// SIGTERM each (newest first), up to 10 s for a clean exit, then SIGKILL.
    async fn stop_all(&mut self) {
        while let Some(mut p) = self.0.pop() {
            if let Some(pid) = p.child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
                if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
                    .await
                    .is_ok()
                {
                    continue;
                }
            }
            let _ = p.child.kill().await;
        }
    }
}

async fn wait_http(
    http: &reqwest::Client,
    procs: &mut Procs,
    url: &str,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        procs.check_alive()?;
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} not ready at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_broker(
    args: &Args,
    procs: &mut Procs,
    log_dir: &Path,
) -> anyhow::Result<(String, String)> {
    if let Some(brokers) = &args.kafka_brokers {
        shared::kafka::ensure_topics(brokers, &TOPICS, args.partitions).await?;
        return Ok((brokers.clone(), format!("Kafka at {brokers}")));
    }
    let bin = match &args.tansu_bin {
        Some(b) => b.clone(),
        None => PathBuf::from(std::env::var("HOME").context("HOME unset")?)
            .join(".cache/billing-outbox/tansu/bin/tansu"),
    };
    anyhow::ensure!(
        bin.exists(),
        "tansu not found at {}: cargo install tansu --locked --features dynostore --root ~/.cache/billing-outbox/tansu, or set KAFKA_BROKERS",
        bin.display()
    );
    let port = bench::free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let pid = procs.spawn(
        &bin,
        "tansu",
        &[
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ],
        &[],
        log_dir,
    )?;
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&bootstrap).await.is_err() {
        procs.check_alive()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "tansu did not listen on {bootstrap}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared::kafka::ensure_topics(&bootstrap, &TOPICS, args.partitions).await?;
    Ok((
        bootstrap.clone(),
        format!("tansu (memory storage, pid {pid}) at {bootstrap}"),
    ))
}

/// A realistic bill: Korean and international recipients, 1-5 items, KRW or USD.
fn bill_json(rng: &mut StdRng, i: usize) -> Value {
    const FAMILY: [&str; 6] = ["김", "이", "박", "최", "정", "강"];
    const GIVEN: [&str; 6] = ["민수", "서연", "지훈", "하은", "도윤", "수아"];
    const INTL: [&str; 6] = [
        "Jane Doe",
        "Liam O'Connor",
        "Zoë Müller",
        "Mateo García",
        "Aiko Tanaka",
        "Priya Sharma",
    ];
    const KRW: [(&str, i64, i64); 4] = [
        ("모바일 요금 (5G 무제한)", 55_000, 95_000),
        ("인터넷 기가 요금", 22_000, 38_500),
        ("IPTV 요금", 9_900, 18_700),
        ("단말기 할부금", 15_000, 60_000),
    ];
    const USD: [(&str, i64, i64); 4] = [
        ("Cloud storage plan", 299, 2_999),
        ("Fibre broadband", 3_999, 8_999),
        ("Mobile plan", 1_500, 6_500),
        ("Streaming bundle", 899, 2_499),
    ];
    let korean = rng.random_bool(0.6);
    let (name, phone, currency, catalogue): (String, String, &str, &[(&str, i64, i64)]) = if korean
    {
        (
            format!(
                "{}{}",
                FAMILY[rng.random_range(0..FAMILY.len())],
                GIVEN[rng.random_range(0..GIVEN.len())]
            ),
            // Never ending in 0000 (provider-sim's always-unreachable numbers).
            format!(
                "010-{:04}-{:04}",
                rng.random_range(1000..10000),
                rng.random_range(1..10000)
            ),
            "KRW",
            &KRW,
        )
    } else {
        (
            INTL[rng.random_range(0..INTL.len())].to_owned(),
            format!("+1 415 555 {:04}", rng.random_range(1..10000)),
            "USD",
            &USD,
        )
    };
    let domain = ["example.com", "example.co.kr", "mail.example.org"][i % 3];
    let items: Vec<Value> = (0..rng.random_range(1..=5))
        .map(|_| {
            let (item, lo, hi) = catalogue[rng.random_range(0..catalogue.len())];
            json!({ "name": item, "amount": rng.random_range(lo..hi) })
        })
        .collect();
    json!({
        "external_id": format!("e2e-{i}"),
        "recipient": { "name": name, "email": format!("customer{i}@{domain}"), "phone": phone },
        "billing_period": "2026-11",
        "due_date": "2026-12-15",
        "currency": currency,
        "items": items,
    })
}

/// Writes `n` bills with the API's validation, encryption and batch statement.
async fn write_backlog(
    pool: &PgPool,
    keyring: &Keyring,
    n: usize,
    batch: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0;
    while written < n {
        let size = batch.min(n - written);
        let mut prepared = Vec::with_capacity(size);
        for i in written..written + size {
            let body = bill_json(&mut rng, i);
            let mut errors = Vec::new();
            let valid = parse_bill(&body, &Loc::root(), &mut errors)
                .with_context(|| format!("generated bill {i} is invalid: {errors:?}"))?;
            let traceparent = format!(
                "00-{:032x}-{:016x}-01",
                rng.random::<u128>(),
                rng.random::<u64>()
            );
            prepared.push(PreparedBill::new(
                &valid,
                None,
                keyring,
                TOPICS[0],
                &traceparent,
            ));
        }
        match insert_batch(pool, &prepared).await? {
            Ok(w) => anyhow::ensure!(w.len() == size, "batch wrote {} of {size}", w.len()),
            Err(conflicts) => bail!("unexpected idempotency conflicts: {conflicts:?}"),
        }
        written += size;
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pending: u64,
    sending: u64,
    sent_email: u64,
    sent_sms: u64,
    dead: u64,
    /// Bills on the sms channel, whatever their status.
    fallback: u64,
}

impl Counts {
    fn terminal(&self) -> u64 {
        self.sent_email + self.sent_sms + self.dead
    }
}

async fn counts(pool: &PgPool) -> anyhow::Result<Counts> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, channel, count(*) FROM bills GROUP BY 1, 2")
            .fetch_all(pool)
            .await?;
    let mut c = Counts::default();
    for (status, channel, n) in rows {
        let n = n as u64;
        match (status.as_str(), channel.as_str()) {
            ("SENT", "email") => c.sent_email += n,
            ("SENT", _) => c.sent_sms += n,
            ("DEAD", _) => c.dead += n,
            ("PENDING", _) => c.pending += n,
            _ => c.sending += n,
        }
        if channel == "sms" {
            c.fallback += n;
        }
    }
    Ok(c)
}

async fn unpublished(pool: &PgPool, topic: Option<&str>) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox_pending WHERE topic = $1 OR $1 IS NULL")
            .bind(topic)
            .fetch_one(pool)
            .await?,
    )
}

async fn sim_stats(http: &reqwest::Client, sim: &str) -> anyhow::Result<Stats> {
    Ok(http
        .get(format!("{sim}/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// `url` with its database name replaced by `db` (user, password, host and options kept).
fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("DATABASE_URL has no scheme")? + 3;
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    })
}

async fn consumer_metrics(http: &reqwest::Client, admin: &str) -> Option<String> {
    http.get(format!("http://{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

async fn run(
    args: &Args,
    server: &PgConnectOptions,
    db: &str,
    bin_dir: &Path,
    log_dir: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let load_at_start = bench::loadavg();
    let (brokers, broker_name) = start_broker(args, procs, log_dir).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(server.clone().database(db))
        .await?;
    shared::MIGRATOR.run(&pool).await?;
    let database_url = with_database(&args.database_url, db)?;
    let keys = Keyring::generate_spec("e2e");
    let keyring = Keyring::parse(&keys)?;

    let rate_mode = args.rate_per_min.is_some();
    let n = args.bills.unwrap_or(match args.rate_per_min {
        // Enough for the warm-up, the window and a margin, so the backlog never runs dry.
        Some(rate) => {
            (rate as u64 * (args.warmup_secs + args.minutes * 60 + 60) / 60).max(1000) as usize
        }
        None => 100_000,
    });

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let sim_addr = format!("127.0.0.1:{}", bench::free_port()?);
    let sim = format!("http://{sim_addr}");
    let sim_pid = procs.spawn(
        &bin_dir.join("provider-sim"),
        "provider-sim",
        &[],
        &[
            ("PROVIDER_SIM_ADDR", sim_addr.clone()),
            ("SIM_LATENCY_MS", args.latency_ms.to_string()),
            ("SIM_FAILURE_RATE", args.failure_rate.to_string()),
        ],
        log_dir,
    )?;
    wait_http(&http, procs, &format!("{sim}/healthz"), "provider-sim").await?;

    println!(
        "e2e benchmark: {} bills, provider latency {} ms, failure rate {}, MAX_IN_FLIGHT {}{}, {} partitions",
        n,
        args.latency_ms,
        args.failure_rate,
        args.in_flight,
        args.rate_per_min
            .map(|r| format!(", SEND_RATE_PER_MIN {r}"))
            .unwrap_or_default(),
        args.partitions
    );
    println!(
        "  broker: {broker_name}; Postgres database {db}; {} cores; load average at start {load_at_start}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let started = Instant::now();
    write_backlog(&pool, &keyring, n, args.insert_batch, args.seed).await?;
    let write_secs = started.elapsed().as_secs_f64();
    pool.execute("ANALYZE bills, bill_items, outbox").await?;
    // So that a checkpoint of the backlog's writes does not land inside the measurement.
    let _ = pool.execute("CHECKPOINT").await;
    println!(
        "  backlog: {n} bills (+ items + outbox rows) written in {write_secs:.1} s through the API's batch statement ({:.0} bills/s)",
        n as f64 / write_secs
    );

    let relay_addr = format!("127.0.0.1:{}", bench::free_port()?);
    let consumer_addr = format!("127.0.0.1:{}", bench::free_port()?);
    let common = [
        ("DATABASE_URL", database_url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
    ];
    let mut consumer_env: Vec<(&str, String)> = common.to_vec();
    consumer_env.extend([
        ("BILLING_ENCRYPTION_KEYS", keys.clone()),
        ("EMAIL_PROVIDER_URL", format!("{sim}/v1/email")),
        ("SMS_PROVIDER_URL", format!("{sim}/v1/sms")),
        ("CONSUMER_ADMIN_ADDR", consumer_addr.clone()),
        (
            "CONSUMER_GROUP",
            format!("bench-e2e-{}", std::process::id()),
        ),
        ("MAX_IN_FLIGHT", args.in_flight.to_string()),
    ]);
    if let Some(rate) = args.rate_per_min {
        consumer_env.push(("SEND_RATE_PER_MIN", rate.to_string()));
    }
    let mut relay_env: Vec<(&str, String)> = common.to_vec();
    relay_env.push(("RELAY_ADMIN_ADDR", relay_addr.clone()));

    let cpu0 = bench::machine_cpu_ticks();
    let t0 = Instant::now();
    let relay_pid = procs.spawn(
        &bin_dir.join("billing-relay"),
        "billing-relay",
        &[],
        &relay_env,
        log_dir,
    )?;
    let consumer_pid = procs.spawn(
        &bin_dir.join("billing-consumer"),
        "billing-consumer",
        &[],
        &consumer_env,
        log_dir,
    )?;
    let sim_cpu0 = bench::proc_cpu_secs(sim_pid).unwrap_or(0.0);
    let tansu_pid = procs.0.iter().find(|p| p.name == "tansu").map(Proc::pid);
    let tansu_cpu0 = tansu_pid.and_then(bench::proc_cpu_secs).unwrap_or(0.0);
    let postgres_cpu0 = bench::cpu_secs_of_all("postgres");

    if rate_mode {
        return rate_run(
            args,
            &http,
            &sim,
            &pool,
            procs,
            t0,
            consumer_pid,
            args.rate_per_min.unwrap_or(0),
        )
        .await;
    }

    // Drain: poll until every bill is terminal.
    let mut samples: Vec<(f64, u64)> = vec![(0.0, 0)];
    // (seconds, the consumer's in-flight gauge)
    let mut in_flight: Vec<(f64, f64)> = Vec::new();
    let mut max_rss_kb = 0;
    let mut first_sent: Option<f64> = None;
    let mut backlog_published: Option<f64> = None;
    let mut last_print = 0.0;
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let (last, hwm_kb, cpu_at_end) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        procs.check_alive()?;
        let t = t0.elapsed().as_secs_f64();
        let c = counts(&pool).await?;
        if let Some(kb) = bench::proc_status_kb(consumer_pid, "VmRSS") {
            max_rss_kb = max_rss_kb.max(kb);
        }
        samples.push((t, c.terminal()));
        if let Some(v) = consumer_metrics(&http, &consumer_addr)
            .await
            .and_then(|m| bench::prometheus_value(&m, "billing_consumer_in_flight"))
        {
            in_flight.push((t, v));
        }
        if first_sent.is_none() && c.terminal() > 0 {
            first_sent = Some(t);
        }
        let backlog = unpublished(&pool, None).await?;
        // When the relay had published the whole backlog (its `bills.email` rows; later rows
        // are fallbacks to `bills.sms`), to the poll's resolution.
        if backlog_published.is_none() && unpublished(&pool, Some(TOPICS[0])).await? == 0 {
            backlog_published = Some(t);
        }
        if t - last_print >= 10.0 || c.terminal() as usize >= n {
            last_print = t;
            eprintln!(
                "  t={t:6.1}s terminal {:>7} ({:5.1} %), pending {:>6}, sending {:>5}, unpublished outbox {:>6}, consumer RSS {:.0} MB, load {}",
                c.terminal(),
                c.terminal() as f64 * 100.0 / n as f64,
                c.pending,
                c.sending,
                backlog,
                mb(bench::proc_status_kb(consumer_pid, "VmRSS").unwrap_or(0)),
                bench::loadavg()
            );
        }
        if c.terminal() as usize >= n {
            let hwm_kb = bench::proc_status_kb(consumer_pid, "VmHWM").unwrap_or(0);
            let cpu_at_end = (
                bench::proc_cpu_secs(relay_pid).unwrap_or(0.0),
                bench::proc_cpu_secs(consumer_pid).unwrap_or(0.0),
                bench::proc_cpu_secs(sim_pid).unwrap_or(0.0) - sim_cpu0,
                tansu_pid
                    .and_then(bench::proc_cpu_secs)
                    .map(|s| s - tansu_cpu0)
                    .unwrap_or(0.0),
            );
            break (
                c,
                hwm_kb,
                (
                    cpu_at_end,
                    bench::cpu_secs_of_all("postgres") - postgres_cpu0,
                ),
            );
        }
        if Instant::now() > deadline {
            bail!(
                "not drained after {} s: {c:?}; logs in {}",
                args.timeout_secs,
                log_dir.display()
            );
        }
    };
    // The last poll saw the drain completed somewhere in the preceding 500 ms; the crossing
    // of n is interpolated like the 10 % and 90 % marks.
    let drain_secs = bench::crossing_time(&samples, n as u64).unwrap_or(t0.elapsed().as_secs_f64());
    let cpu1 = bench::machine_cpu_ticks();
    let stats = sim_stats(&http, &sim).await?;
    let load_at_end = bench::loadavg();
    // How long a bill whose email failed waited for its SMS attempt.
    let fallback_wait: (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY w), max(w) FROM (
             SELECT extract(epoch FROM s.started_at - e.finished_at)::float8 AS w
             FROM delivery_attempts e
             JOIN delivery_attempts s ON s.bill_id = e.bill_id AND s.channel = 'sms'
             WHERE e.channel = 'email' AND e.outcome = 'FAILED') x",
    )
    .fetch_one(&pool)
    .await?;
    let metrics = consumer_metrics(&http, &consumer_addr)
        .await
        .unwrap_or_default();
    let provider_latency = bench::prometheus_value(
        &metrics,
        "billing_provider_latency_seconds_sum{channel=\"email\"}",
    )
    .zip(bench::prometheus_value(
        &metrics,
        "billing_provider_latency_seconds_count{channel=\"email\"}",
    ))
    .map(|(sum, count)| sum / count.max(1.0));

    let rate = n as f64 / drain_secs;
    let t10 = bench::crossing_time(&samples, n as u64 / 10).unwrap_or(0.0);
    let t90 = bench::crossing_time(&samples, n as u64 * 9 / 10).unwrap_or(drain_secs);
    let steady = (n as u64 * 8 / 10) as f64 / (t90 - t10).max(1e-9);
    let million_secs = 1_000_000.0 / steady;
    let peak_rss_mb = mb(hwm_kb.max(max_rss_kb));
    let extra_requests =
        (stats.email.requests + stats.sms.requests) as i64 - n as i64 - last.fallback as i64;
    let machine_busy = match (cpu0, cpu1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            format!(
                "{:.0} % of all cores",
                (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64
            )
        }
        _ => "?".into(),
    };

    println!();
    println!("| measure | value | target | |");
    println!("|---|---|---|---|");
    println!("| time to drain {n} bills | {drain_secs:.1} s | | |");
    println!(
        "| bills/s (whole run, incl. start-up) | {rate:.0} | >= {RATE_TARGET:.0} | {} |",
        mark(rate >= RATE_TARGET)
    );
    println!(
        "| bills/s steady (10 % -> 90 % done) | {steady:.0} | >= {RATE_TARGET:.0} | {} |",
        mark(steady >= RATE_TARGET)
    );
    println!(
        "| 1,000,000 bills at the steady rate | {:.1} min | <= {:.0} min | {} |",
        million_secs / 60.0,
        MILLION_SECS_TARGET / 60.0,
        mark(million_secs <= MILLION_SECS_TARGET)
    );
    println!(
        "| consumer peak RSS (VmHWM {:.0} MB, max sampled VmRSS {:.0} MB) | {peak_rss_mb:.0} MB | <= {RSS_TARGET_MB:.0} MB | {} |",
        mb(hwm_kb),
        mb(max_rss_kb),
        mark(peak_rss_mb <= RSS_TARGET_MB)
    );
    println!(
        "| provider-sim duplicates (email + sms) | {} | 0 | {} |",
        stats.email.duplicates + stats.sms.duplicates,
        mark(stats.email.duplicates + stats.sms.duplicates == 0)
    );
    println!(
        "| provider requests beyond one per bill and channel | {extra_requests} | 0 | {} |",
        mark(extra_requests == 0)
    );
    println!(
        "| bills SENT + DEAD | {} of {n} | all | {} |",
        last.terminal(),
        mark(last.terminal() as usize == n)
    );
    println!();
    println!(
        "outcomes: SENT by email {}, SENT by sms {}, DEAD {}, fell back to sms {}",
        last.sent_email, last.sent_sms, last.dead, last.fallback
    );
    for (name, s) in [("email", stats.email), ("sms", stats.sms)] {
        println!(
            "provider-sim {name:>5}: requests {}, delivered {}, duplicates {}, failed {}",
            s.requests, s.delivered, s.duplicates, s.failed
        );
    }
    println!(
        "phases: first bill terminal at {:.1} s; relay had published the backlog at {}; 10 % at {t10:.1} s, 90 % at {t90:.1} s",
        first_sent.unwrap_or(f64::NAN),
        backlog_published
            .map(|t| format!("{t:.1} s"))
            .unwrap_or_else(|| "(not seen)".into())
    );
    if let (Some(p50), Some(max)) = fallback_wait {
        println!("fallback: email failure -> SMS attempt waited p50 {p50:.1} s, max {max:.1} s");
    }
    let ((relay_cpu, consumer_cpu, sim_cpu, tansu_cpu), postgres_cpu) = cpu_at_end;
    println!(
        "CPU seconds during the drain: consumer {consumer_cpu:.1}, relay {relay_cpu:.1}, provider-sim {sim_cpu:.1}, tansu {tansu_cpu:.1}, Postgres server (all its databases) {postgres_cpu:.1}; machine busy {machine_busy} of {drain_secs:.0} s x {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    // Little's law over the steady part: time a bill spends in the consumer = mean in flight /
    // rate; what exceeds the provider's latency is the consumer's own path (claim, outcome,
    // Kafka intake, waiting for CPU).
    let steady_in_flight: Vec<f64> = in_flight
        .iter()
        .filter(|(t, _)| (t10..=t90).contains(t))
        .map(|(_, v)| *v)
        .collect();
    if let (false, Some(latency)) = (steady_in_flight.is_empty(), provider_latency) {
        let mean = steady_in_flight.iter().sum::<f64>() / steady_in_flight.len() as f64;
        let residence = mean / steady;
        println!(
            "consumer, 10 %-90 %: mean in flight {mean:.0} of {}; time in flight per bill {:.0} ms = provider call {:.0} ms (mean) + {:.0} ms own path",
            args.in_flight,
            residence * 1000.0,
            latency * 1000.0,
            (residence - latency) * 1000.0
        );
    }
    println!("load average: at start {load_at_start}, at end {load_at_end}");
    Ok(())
}

/// The rate-limit run: samples provider-sim's counters every second and measures full
/// minutes after the warm-up.
#[allow(clippy::too_many_arguments)]
async fn rate_run(
    args: &Args,
    http: &reqwest::Client,
    sim: &str,
    pool: &PgPool,
    procs: &mut Procs,
    t0: Instant,
    consumer_pid: u32,
    rate: u32,
) -> anyhow::Result<()> {
    let end = args.warmup_secs + args.minutes * 60;
    // (seconds since start, email requests, sms requests)
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut max_rss_kb = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        procs.check_alive()?;
        let t = t0.elapsed().as_secs_f64();
        let s = sim_stats(http, sim).await?;
        samples.push((t, s.email.requests, s.sms.requests));
        if let Some(kb) = bench::proc_status_kb(consumer_pid, "VmRSS") {
            max_rss_kb = max_rss_kb.max(kb);
        }
        if samples.len() % 15 == 0 {
            eprintln!(
                "  t={t:6.1}s email requests {:>7}, sms requests {:>5}, load {}",
                s.email.requests,
                s.sms.requests,
                bench::loadavg()
            );
        }
        if t >= end as f64 + 0.5 {
            break;
        }
    }
    let hwm_kb = bench::proc_status_kb(consumer_pid, "VmHWM").unwrap_or(0);
    let consumer_cpu = bench::proc_cpu_secs(consumer_pid).unwrap_or(0.0);
    let elapsed = t0.elapsed().as_secs_f64();
    let c = counts(pool).await?;
    let stats = sim_stats(http, sim).await?;
    anyhow::ensure!(
        c.pending > 0 || c.sending > 0,
        "the backlog ran dry inside the window; pass a larger --bills"
    );

    // Requests at time t, interpolated between the samples around it.
    let at = |t: f64, sel: fn(&(f64, u64, u64)) -> u64| -> f64 {
        let i = samples
            .iter()
            .position(|s| s.0 >= t)
            .unwrap_or(samples.len() - 1);
        if i == 0 {
            return sel(&samples[0]) as f64;
        }
        let (a, b) = (&samples[i - 1], &samples[i]);
        let f = ((t - a.0) / (b.0 - a.0).max(1e-9)).clamp(0.0, 1.0);
        sel(a) as f64 + (sel(b) as f64 - sel(a) as f64) * f
    };
    let email = |s: &(f64, u64, u64)| s.1;
    let both = |s: &(f64, u64, u64)| s.1 + s.2;
    let (lo, hi) = (rate as f64 * 0.95, rate as f64);
    println!();
    println!("| window | email sends/min | all sends/min | target (email) | |");
    println!("|---|---|---|---|---|");
    let mut ok = true;
    for m in 0..args.minutes {
        let a = (args.warmup_secs + m * 60) as f64;
        let b = a + 60.0;
        let e = at(b, email) - at(a, email);
        let all = at(b, both) - at(a, both);
        ok &= e >= lo && e <= hi;
        println!(
            "| minute {} ({a:.0}-{b:.0} s) | {e:.0} | {all:.0} | {lo:.0}-{hi:.0} | {} |",
            m + 1,
            mark(e >= lo && e <= hi)
        );
    }
    // Every 60-s window starting on a whole second after the warm-up: the extremes show
    // whether the rate "stays" in the band, not just on average.
    let mut windows = Vec::new();
    let mut s = args.warmup_secs as f64;
    while s + 60.0 <= end as f64 {
        windows.push(at(s + 60.0, email) - at(s, email));
        s += 1.0;
    }
    let wmin = windows.iter().copied().fold(f64::INFINITY, f64::min);
    let wmax = windows.iter().copied().fold(0.0, f64::max);
    let in_band = wmin >= lo && wmax <= hi;
    println!(
        "| every sliding 60 s window after {} s ({} windows): min-max | {wmin:.0}-{wmax:.0} | | {lo:.0}-{hi:.0} | {} |",
        args.warmup_secs,
        windows.len(),
        mark(in_band)
    );
    let first_minute = at(60.0, email);
    println!();
    println!(
        "first minute after start (incl. start-up and any initial burst): {first_minute:.0} email requests"
    );
    for (name, s) in [("email", stats.email), ("sms", stats.sms)] {
        println!(
            "provider-sim {name:>5}: requests {}, delivered {}, duplicates {}, failed {}",
            s.requests, s.delivered, s.duplicates, s.failed
        );
    }
    println!(
        "bills at stop: SENT {}, DEAD {}, PENDING {}, SENDING {}; consumer peak RSS {:.0} MB",
        c.sent_email + c.sent_sms,
        c.dead,
        c.pending,
        c.sending,
        mb(hwm_kb.max(max_rss_kb))
    );
    println!(
        "consumer CPU: {consumer_cpu:.1} s over {elapsed:.0} s ({:.0} % of one core); load average at end: {}",
        consumer_cpu * 100.0 / elapsed,
        bench::loadavg()
    );
    if !ok || !in_band {
        eprintln!("e2e: the send rate left the {lo:.0}-{hi:.0}/min band");
    }
    Ok(())
}
