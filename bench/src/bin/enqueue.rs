//! Enqueue benchmark: how fast `billing-api` accepts bills, against the physical limit.
//!
//! Creates a fresh database (`bench_enqueue_<pid>`) on the server of `DATABASE_URL`, migrates
//! it, starts the API as its own process (this binary re-run as `billing-api serve`: the same
//! `billing_api::run` the real binary calls, settings from the environment), then measures
//! 1. single `POST /v1/bills` at concurrency C (bills/s, median of the rounds), driven by `wrk`
//!    (a C load generator in its own process, as pgbench's client is) when it is installed,
//!    else by an in-process reqwest client (which competes with the API for the two cores),
//! 2. `POST /v1/bills/batch` of 1,000 bills (bills/s, median of the rounds), against the
//!    30,000 bills/s target,
//! 3. `pgbench` running THE SAME SQL statement the API executes for one bill
//!    (`billing_api::write::INSERT_ONE_SQL`, parameters replaced by literals of the same
//!    sizes and time-ordered ids) at the same concurrency, and prints the API/pgbench ratio.
//!
//! Run: `cargo run --release -p bench --bin enqueue -- --help`.

use anyhow::{bail, Context};
use billing_api::validation::{parse_bill, Loc};
use billing_api::write::{PreparedBill, INSERT_ONE_SQL};
use clap::Parser;
use serde_json::{json, Value};
use shared::crypto::Keyring;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "enqueue",
    about = "billing-api enqueue rate vs pgbench running the same SQL"
)]
struct Args {
    /// Server to create the benchmark database on (any database of it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Concurrent single-bill clients (and pgbench clients).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Concurrent batch clients (4 keeps both cores busy: while one request is in Postgres,
    /// another is being parsed and encrypted).
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Bills per batch request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Seconds per measured round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Measured rounds per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// pgbench query mode (`prepared` matches the API's prepared statements).
    #[arg(long, default_value = "prepared")]
    pgbench_mode: String,
    /// What sends the single-bill requests: `wrk` (a separate C process, like pgbench's
    /// client; `apt-get install wrk`), `reqwest` (in this process), or `auto` (wrk when found).
    #[arg(long, default_value = "auto")]
    client: String,
    /// The API's single-bill writers (`API_WRITERS`; its default when unset).
    #[arg(long)]
    api_writers: Option<usize>,
    /// Most waiting single bills a writer commits together (`API_WRITE_GROUP`; 1 = one
    /// statement per bill, as pgbench runs; the API's default when unset).
    #[arg(long)]
    api_write_group: Option<usize>,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
}

/// First argument that makes this binary run the API server instead of the benchmark.
const SERVE_API: &str = "__serve-api";

const BATCH_TARGET: f64 = 30_000.0;
const SINGLE_TARGET_RATIO: f64 = 0.70;

fn bill(n: usize) -> Value {
    json!({
        "recipient": {"name": "Kim Minsu", "email": "kim.minsu@example.com", "phone": "010-1234-5678"},
        "billing_period": "2026-11",
        "due_date": "2026-12-10",
        "currency": "KRW",
        "items": [
            {"name": "Mobile plan, November", "amount": 55000 + n as i64},
            {"name": "Roaming", "amount": 12000}
        ]
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(SERVE_API) {
        // The API process: exactly what `billing-api serve` runs, configured by the
        // environment the benchmark set.
        shared::telemetry::init();
        let cli = billing_api::settings::Cli::parse_from(["billing-api", "serve"]);
        return billing_api::run(cli).await;
    }
    let args = Args::parse();
    let scratch = bench::ScratchDb::create(&args.database_url, "bench_enqueue").await?;
    let (server, db) = (&scratch.server, scratch.name.as_str());
    let result = run(&args, server, db).await;
    scratch.finish(args.keep_db).await?;
    result
}

async fn run(args: &Args, server: &PgConnectOptions, db: &str) -> anyhow::Result<()> {
    let c = args.concurrency;
    let pool = PgPoolOptions::new()
        .max_connections(c as u32)
        .connect_with(server.clone().database(db))
        .await?;
    shared::MIGRATOR.run(&pool).await?;
    let key_spec = Keyring::generate_spec("bench");
    let keyring = Keyring::parse(&key_spec)?;
    let api = ApiProcess::start(&pg_url(server, db), &key_spec, c, args).await?;
    let base = api.base.clone();
    let use_wrk = match args.client.as_str() {
        "wrk" => true,
        "reqwest" => false,
        "auto" => which("wrk"),
        other => bail!("--client must be wrk, reqwest or auto, not {other}"),
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c.max(args.batch_concurrency))
        .build()?;
    let single_body = bytes_of(&bill(0));
    let batch_body =
        bytes_of(&json!({"bills": (0..args.batch_size).map(bill).collect::<Vec<_>>()}));

    println!(
        "billing-api enqueue benchmark: {} cores, concurrency {c}, {} rounds x {} s, database {db}, load {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.rounds,
        args.seconds,
        bench::loadavg()
    );
    println!(
        "  API: separate process (pid {}), API_WRITERS {}, API_WRITE_GROUP {}; single-bill client: {}",
        api.child.id().unwrap_or(0),
        args.api_writers
            .unwrap_or(billing_api::state::DEFAULT_WRITERS),
        args.api_write_group
            .unwrap_or(billing_api::state::DEFAULT_WRITE_GROUP),
        if use_wrk {
            "wrk, 2 threads, separate process"
        } else {
            "reqwest, in this process"
        }
    );
    let wrk_script = std::env::temp_dir().join(format!("{db}.lua"));
    std::fs::write(&wrk_script, wrk_lua(&single_body))?;
    // Warm-up: connections, prepared statements, caches.
    drive(
        &client,
        &format!("{base}/v1/bills"),
        &single_body,
        c,
        Duration::from_secs(1),
        1,
    )
    .await?;
    drive(
        &client,
        &format!("{base}/v1/bills/batch"),
        &batch_body,
        1,
        Duration::from_millis(500),
        args.batch_size as u64,
    )
    .await?;

    // pgbench runs the same statement on the same database; its rounds alternate with the
    // API's so that background load on this shared machine hits both alike.
    let script = pgbench_script(&keyring)?;
    let script_path = std::env::temp_dir().join(format!("{db}.sql"));
    std::fs::write(&script_path, &script)?;
    let url = pg_url(server, db);
    let mut singles = Vec::new();
    let mut tps_rounds = Vec::new();
    for round in 1..=args.rounds {
        let rate = if use_wrk {
            wrk(
                &pool,
                &format!("{base}/v1/bills"),
                &wrk_script,
                c,
                args.seconds,
            )
            .await?
        } else {
            drive(
                &client,
                &format!("{base}/v1/bills"),
                &single_body,
                c,
                Duration::from_secs(args.seconds),
                1,
            )
            .await?
        };
        println!("  single  round {round}: {rate:>9.0} bills/s");
        singles.push(rate);
        let tps = pgbench(&url, &script_path, c, args.seconds, &args.pgbench_mode)?;
        println!(
            "  pgbench round {round}: {tps:>9.0} tps (same statement, -c {c} -j 2 -M {})",
            args.pgbench_mode
        );
        tps_rounds.push(tps);
    }
    if args.keep_db {
        println!("kept pgbench script {}", script_path.display());
    } else {
        let _ = std::fs::remove_file(&script_path);
    }
    let _ = std::fs::remove_file(&wrk_script);
    // Bills per single-bill commit over the single rounds (the writers' group histogram).
    let per_commit = group_mean(&client, &base).await?;
    let mut batches = Vec::new();
    for round in 1..=args.rounds {
        let rate = drive(
            &client,
            &format!("{base}/v1/bills/batch"),
            &batch_body,
            args.batch_concurrency,
            Duration::from_secs(args.seconds),
            args.batch_size as u64,
        )
        .await?;
        println!(
            "  batch  round {round}: {rate:>9.0} bills/s ({} bills per request, {} clients)",
            args.batch_size, args.batch_concurrency
        );
        batches.push(rate);
    }
    api.stop().await;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bills")
        .fetch_one(&pool)
        .await?;
    pool.close().await;

    let single = bench::median(&mut singles);
    let batch = bench::median(&mut batches);
    let tps = bench::median(&mut tps_rounds);
    let ratio = single / tps;
    println!();
    println!(
        "RESULTS (median of {} rounds; {rows} bills written in total)",
        args.rounds
    );
    println!(
        "  single POST /v1/bills      : {single:>9.0} bills/s   pgbench same SQL: {tps:>8.0} tps   ratio {:.0}% (target >= {:.0}%) {}",
        ratio * 100.0,
        SINGLE_TARGET_RATIO * 100.0,
        verdict(ratio >= SINGLE_TARGET_RATIO)
    );
    println!(
        "    the API committed {per_commit:.1} single bills per statement on average (group commit); pgbench commits one per transaction"
    );
    println!(
        "  batch POST /v1/bills/batch : {batch:>9.0} bills/s   target {BATCH_TARGET:.0} bills/s ({:.0}%) {}",
        batch / BATCH_TARGET * 100.0,
        verdict(batch >= BATCH_TARGET)
    );
    println!("  batch vs pgbench single-bill tps: {:.1}x", batch / tps);
    let (validate_us, prepare_us) = app_cost_per_bill(&keyring, args.batch_size);
    println!(
        "  API CPU per bill outside Postgres (one core): validate {validate_us:.1} us, encrypt + build rows {prepare_us:.1} us"
    );
    Ok(())
}

/// Time spent per bill in validation and in encryption plus row building, measured in-process
/// over a batch: the part of a batch's cost that is ours rather than Postgres's.
fn app_cost_per_bill(keyring: &Keyring, n: usize) -> (f64, f64) {
    let bills: Vec<Value> = (0..n).map(bill).collect();
    let (mut validate, mut prepare) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut errors = Vec::new();
        let valid: Vec<_> = bills
            .iter()
            .filter_map(|b| parse_bill(b, &Loc::root(), &mut errors))
            .collect();
        let t1 = Instant::now();
        let rows: Vec<_> = valid
            .iter()
            .map(|b| {
                PreparedBill::new(
                    b,
                    None,
                    keyring,
                    "bills.email",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
            })
            .collect();
        let t2 = Instant::now();
        std::hint::black_box(rows);
        validate.push((t1 - t0).as_secs_f64() * 1e6 / n as f64);
        prepare.push((t2 - t1).as_secs_f64() * 1e6 / n as f64);
    }
    (bench::median(&mut validate), bench::median(&mut prepare))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

/// A request body shared by every client; each send clones the buffer (cheap next to a
/// round trip, and it keeps the bench free of extra dependencies).
type SharedBody = Arc<Vec<u8>>;

fn bytes_of(v: &Value) -> SharedBody {
    Arc::new(serde_json::to_vec(v).expect("JSON"))
}

/// `clients` loops POSTing `body` for `duration`; returns bills per second.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    body: &SharedBody,
    clients: usize,
    duration: Duration,
    bills_per_request: u64,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, body, done) =
            (client.clone(), url.to_owned(), body.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await?;
                let status = response.status();
                if status != reqwest::StatusCode::ACCEPTED {
                    let text = response.text().await.unwrap_or_default();
                    bail!("{url} answered {status}: {text}");
                }
                response.bytes().await?;
                done.fetch_add(bills_per_request, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// A libpq URL of `db` on the server of `server`.
fn pg_url(server: &PgConnectOptions, db: &str) -> String {
    let user = server.get_username();
    format!(
        "postgresql://{user}@{}:{}/{db}",
        server.get_host(),
        server.get_port()
    )
}

/// The API's single-bill statement with every `$n` replaced by a literal of the size the API
/// binds, and ids generated time-ordered like UUIDv7 (so index inserts land at the same edge).
fn pgbench_script(keyring: &Keyring) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    let valid =
        parse_bill(&bill(0), &Loc::root(), &mut errors).context("the bench bill is valid")?;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let p = PreparedBill::new(&valid, None, keyring, "bills.email", tp);
    // pgbench reads `:name` as a variable, and ciphertexts (`kid:b64`) and timestamps hold
    // colons: write literals as E'' strings with the colon escaped (still a plain literal).
    let q = |s: &str| {
        format!(
            "E'{}'",
            s.replace('\\', "\\\\")
                .replace('\'', "''")
                .replace(':', "\\x3a")
        )
    };
    let ordered_uuid =
        "(lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 16, '0') \
                        || substr(md5(random()::text), 1, 16))::uuid";
    let arr = |items: Vec<String>| format!("'{{{}}}'", items.join(","));
    let params: Vec<String> = vec![
        ordered_uuid.to_owned(),                                        // $1 id
        "NULL".to_owned(),                                              // $2 idempotency_key
        format!("'\\x{}'::bytea", hex_of(&p.request_hash)),             // $3 request_hash
        "NULL".to_owned(),                                              // $4 external_id
        q(&p.name_ct),                                                  // $5
        q(&p.email_ct),                                                 // $6
        q(&p.phone_ct),                                                 // $7
        q(&p.billing_period),                                           // $8
        q(&p.due_date.to_string()),                                     // $9
        q(&p.currency),                                                 // $10
        p.total_minor.to_string(),                                      // $11
        q(&p.traceparent),                                              // $12
        arr((1..=p.item_names.len()).map(|i| i.to_string()).collect()), // $13 positions
        arr(p
            .item_names
            .iter()
            .map(|n| format!("\"{}\"", n.replace('\'', "''")))
            .collect()), // $14
        arr(p.item_amounts.iter().map(|a| a.to_string()).collect()),    // $15
        ordered_uuid.to_owned(),                                        // $16 outbox id
        q(&p.outbox.topic),                                             // $17
        q(p.outbox.aggregate_type),                                     // $18
        q(&p.outbox.event_type),                                        // $19
        format!("{}::json", q(&p.outbox.payload.to_string())),          // $20
        format!("{}::json", q(&p.outbox.headers.to_string())),          // $21
    ];
    let mut sql = INSERT_ONE_SQL.to_owned();
    // Highest first, so `$1` never eats the prefix of `$13`.
    for (i, value) in params.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), value);
    }
    if sql.contains('$') {
        bail!("a parameter was left in the pgbench statement");
    }
    Ok(format!("{sql};\n"))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pgbench(
    url: &str,
    script: &std::path::Path,
    clients: usize,
    seconds: u64,
    mode: &str,
) -> anyhow::Result<f64> {
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            mode,
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("failed to run pgbench (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{stdout}"))
}

/// The API server, run as a child process of this binary.
struct ApiProcess {
    child: tokio::process::Child,
    base: String,
}

impl ApiProcess {
    /// Starts `billing-api serve` on a free port with a pool of `connections` (batches) and the
    /// writers `args` ask for (single bills), and waits until `/readyz` answers.
    async fn start(
        database_url: &str,
        key_spec: &str,
        connections: usize,
        args: &Args,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        if let Some(writers) = args.api_writers {
            command.env("API_WRITERS", writers.to_string());
        }
        if let Some(group) = args.api_write_group {
            command.env("API_WRITE_GROUP", group.to_string());
        }
        let child = command
            .arg(SERVE_API)
            .env("DATABASE_URL", database_url)
            .env("DB_MAX_CONNECTIONS", connections.to_string())
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("BILLING_ENCRYPTION_KEYS", key_spec)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .context("failed to start the API process")?;
        let api = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", api.base)).send().await {
                if r.status().is_success() {
                    return Ok(api);
                }
            }
            if Instant::now() > deadline {
                bail!("the API process did not become ready in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (graceful shutdown), then wait.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn which(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// The wrk script: POST the bill body; every request creates a new bill (no idempotency key).
fn wrk_lua(body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
    )
}

/// Runs wrk for `seconds` with `clients` connections over 2 threads (pgbench's `-j 2`) and
/// returns bills per second as counted in the database (rows written over wrk's run), after
/// checking that every answer was 202.
async fn wrk(
    pool: &sqlx::PgPool,
    url: &str,
    script: &std::path::Path,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let count = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM bills").fetch_one(pool);
    let before = count().await?;
    let started = Instant::now();
    let out = tokio::process::Command::new("wrk")
        .args(["-t", "2", "-c", &clients.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("failed to run wrk")?;
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(line) = stdout.lines().find(|l| l.contains("Non-2xx")) {
        bail!("the API refused requests under wrk: {}", line.trim());
    }
    // "  12345 requests in 5.00s, 3.1MB read": wrk's measured window.
    let window: f64 = stdout
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(_, rest)| rest.split(['s', ',']).next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no 'requests in' line in wrk output:\n{stdout}"))?;
    let written = (count().await? - before) as f64;
    // The database count is the ground truth for how many bills were accepted; requests still
    // in flight when wrk stopped its clock are a rounding error at 5 s.
    Ok(written / window.clamp(0.1, elapsed))
}

/// Mean of the API's `billing_api_write_group_bills` histogram (sum / count) from `/metrics`.
async fn group_mean(client: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let sum = value("billing_api_write_group_bills_sum").context("no write group histogram")?;
    let count = value("billing_api_write_group_bills_count").context("no write group histogram")?;
    Ok(sum / count.max(1.0))
}
