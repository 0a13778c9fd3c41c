//! Enqueue benchmark: how fast `billing-api` accepts bills, against the physical limit.
//!
//! Creates a fresh database (`bench_enqueue_<pid>`) on the server of `DATABASE_URL`, migrates
//! it, starts the API in-process on port 0, then measures
//! 1. single `POST /v1/bills` at concurrency C (bills/s, median of the rounds),
//! 2. `POST /v1/bills/batch` of 1,000 bills (bills/s, median of the rounds), against the
//!    30,000 bills/s target,
//! 3. `pgbench` running THE SAME SQL statement the API executes for one bill
//!    (`billing_api::write::INSERT_ONE_SQL`, parameters replaced by literals of the same
//!    sizes and time-ordered ids) at the same concurrency, and prints the API/pgbench ratio.
//!
//! Run: `cargo run --release -p bench --bin enqueue -- --help`.

use anyhow::{bail, Context};
use billing_api::state::AppState;
use billing_api::validation::{parse_bill, Loc};
use billing_api::write::{PreparedBill, INSERT_ONE_SQL};
use clap::Parser;
use serde_json::{json, Value};
use shared::config::Topics;
use shared::crypto::Keyring;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
}

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
    let keyring = Keyring::parse(&Keyring::generate_spec("bench"))?;
    let state = AppState::new(pool.clone(), keyring.clone(), Topics::default(), None, 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = billing_api::startup::Application::from_parts(
        listener,
        billing_api::startup::router(state),
    )?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let cancel = CancellationToken::new();
    let server_task = tokio::spawn(app.run_until_stopped(cancel.clone()));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c.max(args.batch_concurrency))
        .build()?;
    let single_body = bytes_of(&bill(0));
    let batch_body =
        bytes_of(&json!({"bills": (0..args.batch_size).map(bill).collect::<Vec<_>>()}));

    println!(
        "billing-api enqueue benchmark: {} cores, concurrency {c}, {} rounds x {} s, database {db}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.rounds,
        args.seconds
    );
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
        let rate = drive(
            &client,
            &format!("{base}/v1/bills"),
            &single_body,
            c,
            Duration::from_secs(args.seconds),
            1,
        )
        .await?;
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
    cancel.cancel();
    let _ = server_task.await;

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
        format!("{}::jsonb", q(&p.outbox.payload.to_string())),         // $20
        format!("{}::jsonb", q(&p.outbox.headers.to_string())),         // $21
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
