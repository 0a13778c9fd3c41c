//! `cargo xtask canary`: a personal-data leak test of the running platform. It enqueues bills
//! whose recipients carry recognisable canary values (`canary-<run>-<i>@example.com`,
//! `+82 10 XXXX XXXX`, `Canary<run> ...`), sends invalid requests that contain canary values,
//! plants bills whose ciphertext was tampered with or names an unknown key id, lets everything
//! drain through the real binaries, then searches every place personal data could leak to in
//! clear: every column of every table, every service log line, every record (key, value,
//! headers) of every topic, every error body, the API's answers and every `/metrics` page.
//! It also checks that the tampered bills ended DEAD with a DLT record while the consumer
//! kept running and kept delivering the others. Prints hits per place and
//! `canary: N passed, M failed`.

use crate::demo::services::{self, Service};
use crate::env::{Env, EnvArgs};
use anyhow::{bail, Context};
use clap::Args;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

#[derive(Args, Debug, Clone)]
pub struct CanaryArgs {
    /// Canary bills to enqueue (a few percent bounce on email or die on both channels).
    #[arg(long, default_value_t = 300)]
    pub bills: usize,
    /// Simulated provider latency (provider-sim's SIM_LATENCY_MS).
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Give up when the bills have not all reached SENT or DEAD after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub env: EnvArgs,
}

const TOPICS: [&str; 3] = ["bills.email", "bills.sms", "bills.dlt"];

/// The canary values of one run: every value is recognisable, so a search for them in any
/// text finds a leak.
struct Canaries {
    run: String,
    /// Per-bill phone numbers in every spelling a log or message might use.
    phone_forms: Vec<String>,
}

impl Canaries {
    fn new() -> Self {
        Self {
            run: format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff),
            phone_forms: Vec::new(),
        }
    }

    fn email(&self, i: usize, domain: &str) -> String {
        format!("canary-{}-{i}@{domain}", self.run)
    }

    fn name(&self, i: usize) -> String {
        format!("Canary{} Kim {i}", self.run)
    }

    /// `+82 10 XXXX XXXX`, unique per bill; `dies` ends it in 0000 (provider-sim fails it).
    fn phone(&mut self, dies: bool) -> String {
        let mut rng = rand::rng();
        let a: u32 = rng.random_range(2000..10_000);
        let b: u32 = if dies {
            0
        } else {
            rng.random_range(1000..10_000)
        };
        let (a, b) = (format!("{a:04}"), format!("{b:04}"));
        self.phone_forms.extend([
            format!("+82 10 {a} {b}"),
            format!("+8210{a}{b}"),
            format!("8210{a}{b}"),
            format!("010{a}{b}"),
            format!("010-{a}-{b}"),
            format!("{a} {b}"),
            format!("{a}-{b}"),
        ]);
        format!("+82 10 {a} {b}")
    }

    /// Needles, lower-case: the run token of emails and names, and every phone spelling.
    fn needles(&self) -> Vec<String> {
        let mut n = vec![
            format!("canary-{}", self.run),
            format!("canary{}", self.run),
        ];
        n.extend(self.phone_forms.iter().cloned());
        n
    }
}

/// Counts needle occurrences in `text` (case-insensitive).
fn hits(text: &str, needles: &[String]) -> usize {
    let lower = text.to_lowercase();
    needles
        .iter()
        .map(|n| lower.matches(n.as_str()).count())
        .sum()
}

/// The results table: one line per check, then the closing count.
#[derive(Default)]
struct Report {
    results: Vec<(String, bool)>,
}

impl Report {
    fn check(&mut self, name: String, ok: bool) {
        println!("  [{}] {name}", if ok { " ok " } else { "FAIL" });
        self.results.push((name, ok));
    }

    fn place(&mut self, place: &str, scanned: usize, hits: usize) {
        self.check(
            format!("{place}: {hits} hits in clear ({scanned} scanned)"),
            hits == 0,
        );
    }

    fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.1).count()
    }
}

pub async fn run(args: CanaryArgs) -> anyhow::Result<usize> {
    let bin_dir = services::build(false)?;
    let env = Env::start(&args.env).await?;
    env.describe();
    let mut running = Vec::new();
    let result = tokio::select! {
        r = run_canary(&args, &env, &bin_dir, &mut running) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    for svc in running.into_iter().rev() {
        svc.stop(Duration::from_secs(20)).await;
    }
    env.stop().await;
    let (mut report, log_dir, needles) = result?;
    // The logs are complete only once the services stopped.
    scan_logs(&mut report, &log_dir, &needles)?;
    let failed = report.failed();
    println!(
        "canary: {} passed, {failed} failed",
        report.results.len() - failed
    );
    Ok(failed)
}

struct Urls {
    api: String,
    relay: String,
    consumer: String,
}

async fn run_canary(
    args: &CanaryArgs,
    env: &Env,
    bin_dir: &Path,
    running: &mut Vec<Service>,
) -> anyhow::Result<(Report, PathBuf, Vec<String>)> {
    let mut canaries = Canaries::new();
    let database_url = crate::env::fresh_database(&env.postgres.url, "billing_canary").await?;
    let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/canary")
        .join(&canaries.run);
    std::fs::create_dir_all(&log_dir)?;
    let keys = shared::crypto::Keyring::generate_spec("canary");
    let keyring = shared::crypto::Keyring::parse(&keys)?;
    let admin_token = format!("{:032x}", rand::random::<u128>());
    let port = crate::env::free_port;
    let (api_addr, relay_addr, consumer_addr, sim_addr) = (
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
    );
    let urls = Urls {
        api: format!("http://{api_addr}"),
        relay: format!("http://{relay_addr}"),
        consumer: format!("http://{consumer_addr}"),
    };
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

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let sim_env = [
        ("PROVIDER_SIM_ADDR", sim_addr.clone()),
        ("SIM_LATENCY_MS", args.latency_ms.to_string()),
        ("SIM_FAILURE_RATE", "0".to_owned()),
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
        &with(&[("API_ADDR", api_addr), ("ADMIN_TOKEN", admin_token.clone())]),
        &log_dir,
    )?);
    running.push(Service::spawn(
        bin_dir,
        "billing-relay",
        &[],
        &with(&[("RELAY_ADMIN_ADDR", relay_addr)]),
        &log_dir,
    )?);
    for (svc, url) in running.iter_mut().zip([
        format!("http://{sim_addr}/healthz"),
        format!("{}/readyz", urls.api),
        format!("{}/readyz", urls.relay),
    ]) {
        services::wait_ready(&http, svc, &url).await?;
    }
    eprintln!(
        "xtask: canary run {}; logs in {}",
        canaries.run,
        log_dir.display()
    );
    let pool = PgPool::connect(&database_url).await?;
    let mut report = Report::default();

    // Poisoned bills, planted before the consumer starts so it meets them first: accepted
    // through the API (so the bill and its outbox row are real), then their ciphertext is
    // replaced in the database.
    let mut poisoned = Vec::new();
    for (i, how) in [
        "tampered email ciphertext",
        "unknown key id",
        "truncated name ciphertext",
    ]
    .into_iter()
    .enumerate()
    {
        let i = 1_000_000 + i;
        let body = bill_body(
            &canaries.email(i, "example.com"),
            &canaries.phone(false),
            &canaries.name(i),
            &format!("{}-poison-{i}", canaries.run),
        );
        let id = post_bill(&http, &urls.api, &body).await?;
        let (name_ct, email_ct, phone_ct): (String, String, String) = sqlx::query_as(
            "SELECT recipient_name, recipient_email, recipient_phone FROM bills WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await?;
        let (name_ct, email_ct, phone_ct) = match how {
            "tampered email ciphertext" => (name_ct, flip_one_char(&email_ct), phone_ct),
            "unknown key id" => (
                with_kid(&name_ct, "nokey"),
                with_kid(&email_ct, "nokey"),
                with_kid(&phone_ct, "nokey"),
            ),
            _ => (name_ct[..name_ct.len() / 2].to_owned(), email_ct, phone_ct),
        };
        sqlx::query(
            "UPDATE bills SET recipient_name = $2, recipient_email = $3, recipient_phone = $4 \
             WHERE id = $1 AND status = 'PENDING'",
        )
        .bind(id)
        .bind(name_ct)
        .bind(email_ct)
        .bind(phone_ct)
        .execute(&pool)
        .await?;
        poisoned.push((id, how));
    }

    running.push(Service::spawn(
        bin_dir,
        "billing-consumer",
        &[],
        &with(&[
            ("CONSUMER_ADMIN_ADDR", consumer_addr),
            (
                "CONSUMER_GROUP",
                format!("billing-consumer-{}", canaries.run),
            ),
            ("EMAIL_PROVIDER_URL", format!("http://{sim_addr}/v1/email")),
            ("SMS_PROVIDER_URL", format!("http://{sim_addr}/v1/sms")),
            ("SWEEP_INTERVAL_SECS", "5".into()),
        ]),
        &log_dir,
    )?);
    let consumer = running.last_mut().expect("just pushed");
    services::wait_ready(&http, consumer, &format!("{}/readyz", urls.consumer)).await?;

    // Invalid requests carrying canary values: their problem+json bodies must not echo them.
    let error_bodies =
        probe_errors(&mut report, &http, &urls.api, &admin_token, &mut canaries).await?;

    // The canary batch: ~4% bounce on email (SMS fallback), ~2% fail on both channels (DEAD).
    let mut bodies = Vec::new();
    for i in 0..args.bills {
        let (domain, dies) = match i % 50 {
            0 => ("bounce.test", true),
            1 | 2 => ("bounce.test", false),
            _ => (["example.com", "example.co.kr"][i % 2], false),
        };
        let phone = canaries.phone(dies);
        bodies.push(bill_body(
            &canaries.email(i, domain),
            &phone,
            &canaries.name(i),
            &format!("{}-{i}", canaries.run),
        ));
    }
    // A few one at a time (with an Idempotency-Key, sent twice), the rest in batches.
    let singles = bodies.len().min(10);
    for body in &bodies[..singles] {
        let key = format!("{}-single-{}", canaries.run, body["external_id"]);
        for _ in 0..2 {
            let r = http
                .post(format!("{}/v1/bills", urls.api))
                .header("Idempotency-Key", &key)
                .json(body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "POST /v1/bills: {}", r.status());
        }
    }
    for chunk in bodies[singles..].chunks(100) {
        let r = http
            .post(format!("{}/v1/bills/batch", urls.api))
            .json(&json!({ "bills": chunk }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("batch rejected: {} {}", r.status(), r.text().await?);
        }
    }
    let total = (bodies.len() + poisoned.len()) as i64;
    wait_terminal(&pool, total, Duration::from_secs(args.timeout_secs), || {
        running.iter_mut().try_for_each(Service::check_alive)
    })
    .await?;

    // The poisoned bills: DEAD, never sent, one DLT record each; the consumer alive and every
    // other bill delivered (SIM_FAILURE_RATE = 0, so only the designed ones die).
    let alive = running.iter_mut().all(|s| s.check_alive().is_ok());
    report.check(
        "every service still running after the poisoned bills".into(),
        alive,
    );
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM bills GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await?;
    let count = |s: &str| counts.iter().find(|c| c.0 == s).map_or(0, |c| c.1);
    let all: i64 = counts.iter().map(|c| c.1).sum();
    let want_dead = (0..args.bills).filter(|i| i % 50 == 0).count() as i64 + poisoned.len() as i64;
    report.check(
        format!(
            "bills after the poisoned ones were delivered ({} SENT, {} DEAD of {all}; \
             {want_dead} DEAD by design)",
            count("SENT"),
            count("DEAD"),
        ),
        count("DEAD") == want_dead && count("SENT") == all - want_dead,
    );
    let kafka = read_topics(&env.broker.bootstrap).await?;
    for (id, how) in &poisoned {
        let (status, attempts, sent, last_error): (String, i32, i64, Option<String>) =
            sqlx::query_as(
                "SELECT status, attempts, \
                 (SELECT count(*) FROM delivery_attempts d WHERE d.bill_id = b.id AND outcome = 'SENT'), \
                 last_error FROM bills b WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await?;
        let dlt = kafka
            .iter()
            .filter(|r| r.topic == "bills.dlt" && r.key == id.to_string())
            .count();
        report.check(
            format!(
                "{how}: bill DEAD, never sent, {dlt} DLT record(s) ({status}, attempts {attempts}, \
                 last_error {:?})",
                last_error.unwrap_or_default()
            ),
            status == "DEAD" && sent == 0 && dlt >= 1,
        );
    }

    // Positive control: the canaries are in the database, encrypted (decrypting finds them),
    // so a zero below means "not in clear", not "never stored".
    let poisoned_ids: Vec<Uuid> = poisoned.iter().map(|p| p.0).collect();
    let sample: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, recipient_name, recipient_email, recipient_phone FROM bills \
         WHERE NOT (id = ANY($1)) LIMIT 20",
    )
    .bind(&poisoned_ids)
    .fetch_all(&pool)
    .await?;
    let needles = canaries.needles();
    let found = |id: Uuid, field: &str, ct: &str| {
        keyring
            .decrypt(id, field, ct)
            .is_ok_and(|plain| hits(&plain, &needles) > 0)
    };
    let decrypted = sample
        .iter()
        .filter(|(id, name, email, phone)| {
            found(*id, "name", name) && found(*id, "email", email) && found(*id, "phone", phone)
        })
        .count();
    report.check(
        format!(
            "control: stored name, email and phone decrypt to canaries ({decrypted} of {} bills)",
            sample.len()
        ),
        !sample.is_empty() && decrypted == sample.len(),
    );

    // The places.
    let (scanned, h) = scan_database(&pool, &needles).await?;
    report.place("database (every column of every table)", scanned, h);
    for topic in TOPICS {
        let records: Vec<&Record> = kafka.iter().filter(|r| r.topic == topic).collect();
        let h: usize = records.iter().map(|r| hits(&r.text(), &needles)).sum();
        report.place(
            &format!("kafka {topic} (keys, values, headers)"),
            records.len(),
            h,
        );
    }
    let h: usize = error_bodies.iter().map(|b| hits(b, &needles)).sum();
    report.place("error bodies (problem+json)", error_bodies.len(), h);
    let answers = api_answers(&http, &urls.api, &admin_token, &pool).await?;
    let h: usize = answers.iter().map(|b| hits(b, &needles)).sum();
    report.place(
        "API answers (bills, list, deliveries, dead letters)",
        answers.len(),
        h,
    );
    let mut metrics = Vec::new();
    for base in [&urls.api, &urls.relay, &urls.consumer] {
        metrics.push(
            http.get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        );
    }
    let h: usize = metrics.iter().map(|b| hits(b, &needles)).sum();
    report.place("/metrics of api, relay, consumer", metrics.len(), h);
    pool.close().await;
    Ok((report, log_dir, needles))
}

fn bill_body(email: &str, phone: &str, name: &str, external_id: &str) -> Value {
    json!({
        "external_id": external_id,
        "recipient": { "name": name, "email": email, "phone": phone },
        "billing_period": "2026-11",
        "due_date": "2026-12-15",
        "currency": "KRW",
        "items": [{ "name": "모바일 요금", "amount": 55_000 }, { "name": "부가서비스", "amount": 3_300 }],
    })
}

async fn post_bill(http: &reqwest::Client, api: &str, body: &Value) -> anyhow::Result<Uuid> {
    let r = http
        .post(format!("{api}/v1/bills"))
        .json(body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("POST /v1/bills: {} {}", r.status(), r.text().await?);
    }
    let v: Value = r.json().await?;
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("POST /v1/bills answered without an id")
}

/// Replaces one base64 character in the middle of `kid:b64`, so the tag no longer verifies.
fn flip_one_char(ct: &str) -> String {
    let mut chars: Vec<char> = ct.chars().collect();
    let at = ct.find(':').map_or(0, |k| k + 1) + (ct.len() - ct.find(':').unwrap_or(0)) / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn with_kid(ct: &str, kid: &str) -> String {
    let rest = ct.split_once(':').map_or(ct, |(_, r)| r);
    format!("{kid}:{rest}")
}

/// Sends invalid requests that carry canary values; checks each is a 4xx problem+json and
/// returns the bodies.
async fn probe_errors(
    report: &mut Report,
    http: &reqwest::Client,
    api: &str,
    token: &str,
    canaries: &mut Canaries,
) -> anyhow::Result<Vec<String>> {
    let base = 2_000_000;
    let good = |c: &mut Canaries, i: usize| {
        bill_body(
            &c.email(base + i, "example.com"),
            &c.phone(false),
            &c.name(base + i),
            &format!("{}-probe-{i}", c.run),
        )
    };
    let mut probes: Vec<(&str, reqwest::RequestBuilder)> = Vec::new();

    // A batch where one item has a canary email and an invalid (canary-bearing) phone.
    let mut bad = good(canaries, 1);
    let phone = canaries.phone(false);
    bad["recipient"]["phone"] = json!(format!("{phone} ext. abc"));
    probes.push((
        "batch with one invalid phone",
        http.post(format!("{api}/v1/bills/batch"))
            .json(&json!({ "bills": [good(canaries, 0), bad, good(canaries, 2)] })),
    ));
    // Invalid email, invalid phone, on a single bill.
    let mut b = good(canaries, 3);
    b["recipient"]["email"] = json!(format!("canary-{}-3 at example.com", canaries.run));
    probes.push((
        "invalid email",
        http.post(format!("{api}/v1/bills")).json(&b),
    ));
    let mut b = good(canaries, 4);
    b["recipient"]["phone"] = json!(format!("{}99999999", canaries.phone(false)));
    probes.push((
        "too long phone",
        http.post(format!("{api}/v1/bills")).json(&b),
    ));
    // Canary values in fields of the wrong type or format (serde and parser messages).
    for (field, path) in [
        ("amount", "/items/0/amount"),
        ("due_date", "/due_date"),
        ("currency", "/currency"),
        ("billing_period", "/billing_period"),
    ] {
        let mut b = good(canaries, 5);
        *b.pointer_mut(path).expect("field exists") =
            json!(canaries.email(base + 5, "example.com"));
        probes.push((field, http.post(format!("{api}/v1/bills")).json(&b)));
    }
    let mut b = good(canaries, 6);
    b["recipient"]["email"] = json!([canaries.email(base + 6, "example.com")]);
    probes.push((
        "email as an array",
        http.post(format!("{api}/v1/bills")).json(&b),
    ));
    let mut b = good(canaries, 7);
    b["recipient"]["name"] = json!(format!("{}\u{0}", canaries.name(base + 7)));
    probes.push(("NUL in name", http.post(format!("{api}/v1/bills")).json(&b)));
    // Malformed JSON cut inside a canary value.
    let text = good(canaries, 8).to_string();
    let cut = text.find("@example.com").unwrap_or(text.len() / 2);
    probes.push((
        "truncated JSON",
        http.post(format!("{api}/v1/bills"))
            .header("content-type", "application/json")
            .body(text[..cut].to_owned()),
    ));
    probes.push((
        "wrong content type",
        http.post(format!("{api}/v1/bills"))
            .header("content-type", "text/plain")
            .body(good(canaries, 9).to_string()),
    ));
    let big: Vec<Value> = (0..1_001).map(|i| good(canaries, 100 + i)).collect();
    probes.push((
        "1,001-bill batch",
        http.post(format!("{api}/v1/bills/batch"))
            .json(&json!({ "bills": big })),
    ));
    // The same key with another body: 409.
    let key = format!("{}-conflict", canaries.run);
    let first = good(canaries, 11);
    let r = http
        .post(format!("{api}/v1/bills"))
        .header("Idempotency-Key", &key)
        .json(&first)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "conflict setup: {}", r.status());
    probes.push((
        "idempotency conflict",
        http.post(format!("{api}/v1/bills"))
            .header("Idempotency-Key", &key)
            .json(&good(canaries, 12)),
    ));
    // Canary values in paths, queries and admin filters.
    let email = canaries.email(base + 13, "example.com");
    probes.push((
        "canary as a bill id",
        http.get(format!("{api}/v1/bills/{email}")),
    ));
    probes.push((
        "canary as a status filter",
        http.get(format!("{api}/v1/bills"))
            .query(&[("status", &email)]),
    ));
    probes.push((
        "canary as a cursor",
        http.get(format!("{api}/v1/bills"))
            .query(&[("cursor", &email)]),
    ));
    probes.push((
        "canary in a replay filter's date",
        http.post(format!("{api}/v1/admin/dead-letters/replay"))
            .bearer_auth(token)
            .json(&json!({ "filter": { "since": email }, "dry_run": true })),
    ));
    probes.push((
        "canary as the admin token",
        http.get(format!("{api}/v1/admin/dead-letters"))
            .bearer_auth(&email),
    ));

    let mut bodies = Vec::new();
    let mut bad_status = Vec::new();
    // Oversized: the API answers 413 from Content-Length without reading the body, and closes
    // the connection, so a client still writing megabytes may see a broken pipe instead of the
    // answer. Send the head of the body only (canaries included) and read the answer.
    let head = format!(
        "{{\"bills\": [{}",
        vec![good(canaries, 10).to_string(); 100].join(",")
    );
    let (status, text) = raw_post(api, "/v1/bills/batch", 8 * 1024 * 1024, &head).await?;
    if !(400..500).contains(&status) || !text.contains("application/problem+json") {
        bad_status.push(format!("oversized body: {status}"));
    }
    bodies.push(text);
    for (what, req) in probes {
        let r = req.send().await.with_context(|| format!("probe {what}"))?;
        let status = r.status();
        let problem = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        if !status.is_client_error() || !problem {
            bad_status.push(format!("{what}: {status}"));
        }
        bodies.push(r.text().await?);
    }
    report.check(
        format!(
            "{} invalid requests answered 4xx problem+json ({} not: {bad_status:?})",
            bodies.len(),
            bad_status.len()
        ),
        bad_status.is_empty(),
    );
    Ok(bodies)
}

/// POSTs `body` declaring `content_length` bytes, and returns the answer's status and its
/// whole text (head and body).
async fn raw_post(
    api: &str,
    path: &str,
    content_length: usize,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    // The server may answer and close before this is written; the answer is what counts.
    let _ = stream.write_all(body.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP answer to the oversized POST: {text:?}"))?;
    Ok((status, text))
}

/// Every answer of the read endpoints about this run's bills.
async fn api_answers(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    pool: &PgPool,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM bills ORDER BY id")
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for (id,) in &ids {
        out.push(get_ok(http.get(format!("{api}/v1/bills/{id}"))).await?);
        out.push(get_ok(http.get(format!("{api}/v1/bills/{id}/deliveries"))).await?);
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{api}/v1/bills"))
            .query(&[("limit", "100")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let text = get_ok(req).await?;
        let page: Value = serde_json::from_str(&text)?;
        out.push(text);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    out.push(
        get_ok(
            http.get(format!("{api}/v1/admin/dead-letters"))
                .bearer_auth(token),
        )
        .await?,
    );
    out.push(
        get_ok(
            http.post(format!("{api}/v1/admin/dead-letters/replay"))
                .bearer_auth(token)
                .json(&json!({ "dry_run": true })),
        )
        .await?,
    );
    out.push(get_ok(http.get(format!("{api}/v1/stats"))).await?);
    Ok(out)
}

async fn get_ok(req: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let r = req.send().await?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    Ok(text)
}

/// Waits until `total` bills exist and all are SENT or DEAD, or fails on timeout or when a
/// service died.
async fn wait_terminal(
    pool: &PgPool,
    total: i64,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        alive()?;
        let (n, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('SENT', 'DEAD')) FROM bills",
        )
        .fetch_one(pool)
        .await?;
        // The probes' conflict setup adds one bill of its own.
        if n >= total && done == n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{done} of {n} bills terminal after {timeout:?} ({total} expected)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every row of every table of the public schema as JSON text (so every column, whatever its
/// type), searched for the needles. Returns (rows scanned, hits).
async fn scan_database(pool: &PgPool, needles: &[String]) -> anyhow::Result<(usize, usize)> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let (mut rows, mut h) = (0, 0);
    for (table,) in tables {
        let texts: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT row_to_json(t)::text FROM public.\"{table}\" t"
        ))
        .fetch_all(pool)
        .await?;
        let th: usize = texts.iter().map(|(t,)| hits(t, needles)).sum();
        if th > 0 {
            println!("    table {table}: {th} hits");
        }
        rows += texts.len();
        h += th;
    }
    Ok((rows, h))
}

fn scan_logs(report: &mut Report, log_dir: &Path, needles: &[String]) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines = text.lines().count();
        let h = hits(&text, needles);
        if h > 0 {
            for line in text.lines().filter(|l| hits(l, needles) > 0).take(3) {
                println!("    {}", line.chars().take(300).collect::<String>());
            }
        }
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        report.place(&format!("log {name} (lines)"), lines, h);
    }
    Ok(())
}

struct Record {
    topic: String,
    key: String,
    value: String,
    headers: Vec<(String, String)>,
}

impl Record {
    fn text(&self) -> String {
        let mut t = format!("{}\n{}", self.key, self.value);
        for (k, v) in &self.headers {
            t.push_str(&format!("\n{k}: {v}"));
        }
        t
    }
}

/// Reads every record of every partition of the three topics, from the low to the high
/// watermark.
async fn read_topics(brokers: &str) -> anyhow::Result<Vec<Record>> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("canary-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let timeout = Duration::from_secs(10);
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0i64;
        let mut ends = std::collections::HashMap::new();
        for topic in TOPICS {
            let md = consumer.fetch_metadata(Some(topic), timeout)?;
            for p in md.topics().iter().flat_map(|t| t.partitions()) {
                let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                if hi > lo {
                    tpl.add_partition_offset(topic, p.id(), Offset::Offset(lo))?;
                    ends.insert((topic.to_owned(), p.id()), hi);
                    remaining += hi - lo;
                }
            }
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !ends.is_empty() {
            if std::time::Instant::now() > deadline {
                bail!("reading the topics timed out with {remaining} records left");
            }
            let Some(m) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = m?;
            let lossy =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), lossy(h.value)))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                topic: m.topic().to_owned(),
                key: lossy(m.key()),
                value: lossy(m.payload()),
                headers,
            });
            remaining -= 1;
            let k = (m.topic().to_owned(), m.partition());
            if ends.get(&k).is_some_and(|hi| m.offset() + 1 >= *hi) {
                ends.remove(&k);
            }
        }
        Ok(out)
    })
    .await?
}
