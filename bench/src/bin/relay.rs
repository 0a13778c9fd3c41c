//! Relay benchmark: how fast `billing-relay` drains an outbox backlog, against the raw
//! idempotent producer on the same broker in the same run, and the commit-to-publish latency
//! under a steady load.
//!
//! 1. Creates a fresh database (`bench_relay_<pid>`) on the server of `DATABASE_URL`, migrates
//!    it, writes a backlog of N outbox rows (real `BillEvent` payloads and headers, one bill
//!    each, written with `shared::outbox::insert` in chunks), `VACUUM ANALYZE`s it.
//! 2. Runs the relay in-process until the whole backlog is published: events/s.
//! 3. Sends N records of the same key, value and headers with the relay's own producer
//!    configuration (idempotent, `acks=all`) and awaits every report: records/s.
//!    Steps 1-3 run `--rounds` times (3), alternating, and the medians give the ratio.
//! 4. Runs a fresh relay while tasks insert rows at a steady rate (each insert its own
//!    transaction) and prints commit-to-publish latency p50/p99. "Commit" is when the
//!    writer's COMMIT returned; "publish" is when the relay had committed its position past
//!    the row, after the broker acknowledged the record (the relay's `on_published` observer).
//!    Both clocks are this process's.
//!
//! The broker is `KAFKA_BROKERS` when set (topics are created with the admin API), otherwise
//! rdkafka's in-process `MockCluster`, which keeps nothing and runs inside this process: use a
//! real broker for figures, e.g. `cargo xtask env -- cargo run --release -p bench --bin relay`
//! (tansu when installed, see README).
//!
//! Run: `cargo run --release -p bench --bin relay -- --help`.

use anyhow::Context;
use billing_relay::{Relay, RelayOptions};
use chrono::{DateTime, Utc};
use clap::Parser;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use shared::domain::{BillId, Channel};
use shared::events::event_type;
use shared::outbox::NewOutboxEvent;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "relay",
    about = "billing-relay throughput vs the raw idempotent producer, and latency"
)]
struct Args {
    /// Server to create the benchmark database on (any database of it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Kafka bootstrap servers; an in-process MockCluster when unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Outbox rows in the backlog (and records sent by the raw producer).
    #[arg(long, default_value_t = 200_000)]
    backlog: usize,
    /// Throughput rounds (backlog, relay, raw producer each); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Relay chunk size (`RELAY_BATCH_SIZE`).
    #[arg(long, default_value_t = 5000)]
    batch_size: i64,
    /// Chunks read ahead (`RELAY_READ_AHEAD`).
    #[arg(long, default_value_t = 2)]
    read_ahead: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Steady load: events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Steady load: seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Run the relay with `RELAY_ASYNC_COMMIT` (no WAL flush wait per batch).
    #[arg(long)]
    async_commit: bool,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
}

const THROUGHPUT_TARGET: f64 = 10_000.0;
const RATIO_TARGET: f64 = 0.50;
const P99_TARGET_MS: f64 = 50.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    shared::telemetry::init();
    // The relay records its metrics as in production.
    shared::ops::metrics_handle();
    let scratch = bench::ScratchDb::create(&args.database_url, "bench_relay").await?;
    let (server, db) = (&scratch.server, scratch.name.as_str());
    let result = run(&args, server, db).await;
    scratch.finish(args.keep_db).await?;
    result
}

async fn run(args: &Args, server: &PgConnectOptions, db: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(server.clone().database(db).options([("jit", "off")]))
        .await?;
    shared::MIGRATOR.run(&pool).await?;

    let tag = std::process::id();
    let (backlog_topic, raw_topic, steady_topic) = (
        format!("bench.relay.{tag}"),
        format!("bench.raw.{tag}"),
        format!("bench.steady.{tag}"),
    );
    let topics = [
        backlog_topic.as_str(),
        raw_topic.as_str(),
        steady_topic.as_str(),
    ];
    let mock;
    let (brokers, broker_name) = match &args.kafka_brokers {
        Some(brokers) => {
            shared::kafka::ensure_topics(brokers, &topics, args.partitions).await?;
            (brokers.clone(), format!("Kafka at {brokers}"))
        }
        None => {
            mock = MockCluster::new(1).context("failed to start the mock cluster")?;
            for t in topics {
                mock.create_topic(t, args.partitions, 1)?;
            }
            (
                mock.bootstrap_servers(),
                "rdkafka MockCluster (in-process, 1 broker)".to_owned(),
            )
        }
    };
    println!(
        "billing-relay benchmark: {} cores, {broker_name}, {} partitions, chunks of {}, {} read ahead, {} commit",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.partitions,
        args.batch_size,
        args.read_ahead,
        if args.async_commit { "asynchronous" } else { "synchronous" }
    );
    let options = RelayOptions {
        batch_size: args.batch_size,
        read_ahead: args.read_ahead,
        async_commit: args.async_commit,
        ..RelayOptions::new(brokers.clone())
    };

    // 1-3, `rounds` times, alternating so both see the same machine: a backlog, the relay
    // draining it, the raw producer sending as many records. Both producers are warm when
    // timed: the relay runs from the start and has published a first row (its connection,
    // producer id and the topic's metadata are set up: a second or so on tansu), and the raw
    // producer has sent one record. While a backlog is written the benchmark holds the
    // relay's position row, as a second relay would, so the relay stands by; the clock starts
    // when the benchmark lets go and notifies.
    let config = billing_relay::publish::producer_config(&brokers, options.message_timeout);
    let producer: FutureProducer = shared::kafka::create(config).await?;
    let relay = Relay::new(pool.clone(), options.clone()).await?;
    let stats = relay.stats();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay.run(cancel.clone()));
    write_backlog(&pool, &backlog_topic, 1).await?;
    wait_published(&stats, &task, 1).await?;
    let (mut relay_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // 1. The backlog, with the relay held off.
        let mut hold = pool.begin().await?;
        sqlx::query("SELECT lane FROM outbox_relay FOR UPDATE")
            .execute(&mut *hold)
            .await?;
        let started = Instant::now();
        write_backlog(&pool, &backlog_topic, args.backlog).await?;
        // What autovacuum does between backlogs (the local test server may run without it):
        // refreshes statistics.
        pool.execute("VACUUM ANALYZE outbox").await?;
        // And let the backlog's dirty pages reach the disk before the clock starts: the
        // kernel's writeback otherwise competes with the relay for the two cores (measured:
        // a kworker at 80 % of a core during the first seconds of the relay's run).
        pool.execute("CHECKPOINT").await?;
        let (key, value, headers) = sample_record(&pool).await?;
        if round == 1 {
            println!(
                "backlog: {} rows written in {:.1} s; record: key {} B, value {} B, headers {} B",
                args.backlog,
                started.elapsed().as_secs_f64(),
                key.len(),
                value.len(),
                headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            );
            let warm = raw_produce(&producer, &raw_topic, 1, &key, &value, &headers).await?;
            anyhow::ensure!(warm > 0.0);
        }

        // 2. The relay drains it.
        let before = stats.published();
        let batches_before = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        hold.rollback().await?;
        pool.execute("NOTIFY outbox_inserted").await?;
        wait_published(&stats, &task, before + args.backlog as u64).await?;
        let relay_secs = started.elapsed().as_secs_f64();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
            .fetch_one(&pool)
            .await?;
        anyhow::ensure!(left == 0, "{left} rows left unpublished");
        let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
        let relay_rate = args.backlog as f64 / relay_secs;

        // 3. The raw producer, same configuration, records and broker.
        let raw_secs =
            raw_produce(&producer, &raw_topic, args.backlog, &key, &value, &headers).await?;
        let raw_rate = args.backlog as f64 / raw_secs;
        println!(
            "round {round}: relay {relay_rate:>9.0} events/s ({relay_secs:.2} s, {batches} chunks)   raw producer {raw_rate:>9.0} records/s ({raw_secs:.2} s)   ratio {:.1} %",
            relay_rate / raw_rate * 100.0
        );
        relay_rates.push(relay_rate);
        raw_rates.push(raw_rate);
    }
    drop(producer);
    cancel.cancel();
    task.await??;
    let relay_rate = bench::median(&mut relay_rates);
    let raw_rate = bench::median(&mut raw_rates);
    let ratio = relay_rate / raw_rate;
    println!(
        "relay:        {relay_rate:>9.0} events/s   (median of {} rounds of {} rows)",
        args.rounds, args.backlog
    );
    println!("raw producer: {raw_rate:>9.0} records/s  (median; idempotent, acks=all, await all)");
    println!(
        "ratio relay/raw: {:.1} %   [targets: >= {:.0} events/s: {}; >= {:.0} % of raw: {}]",
        ratio * 100.0,
        THROUGHPUT_TARGET,
        verdict(relay_rate >= THROUGHPUT_TARGET),
        RATIO_TARGET * 100.0,
        verdict(ratio >= RATIO_TARGET)
    );

    // 4. Steady load.
    let (p50, p99, max, n) = steady(&pool, options, &steady_topic, args.rate, args.seconds).await?;
    println!(
        "steady {} events/s for {} s: commit -> publish latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({n} events)   [target p99 <= {P99_TARGET_MS} ms: {}]",
        args.rate,
        args.seconds,
        verdict(p99 <= P99_TARGET_MS)
    );
    Ok(())
}

/// Waits until the relay has published `total` rows in all.
async fn wait_published(
    stats: &billing_relay::RelayStats,
    task: &tokio::task::JoinHandle<anyhow::Result<()>>,
    total: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.published() < total {
        anyhow::ensure!(!task.is_finished(), "the relay stopped early");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not publish in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn event(topic: &str, bill: BillId) -> NewOutboxEvent {
    NewOutboxEvent::bill(
        topic,
        event_type::EMAIL_REQUESTED,
        bill,
        Channel::Email,
        0,
        0,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None,
    )
}

async fn write_backlog(pool: &PgPool, topic: &str, n: usize) -> anyhow::Result<()> {
    const CHUNK: usize = 5000;
    let mut written = 0;
    while written < n {
        let events: Vec<_> = (0..CHUNK.min(n - written))
            .map(|_| event(topic, BillId::new()))
            .collect();
        let mut tx = pool.begin().await?;
        shared::outbox::insert(&mut tx, &events).await?;
        tx.commit().await?;
        written += events.len();
    }
    Ok(())
}

/// Key, value and headers of one backlog row exactly as the relay sends them.
async fn sample_record(pool: &PgPool) -> anyhow::Result<(String, String, Vec<(String, String)>)> {
    let (key, value, headers): (String, String, sqlx::types::Json<HashMap<String, String>>) =
        sqlx::query_as("SELECT aggregateid, payload::text, headers FROM outbox LIMIT 1")
            .fetch_one(pool)
            .await?;
    Ok((key, value, headers.0.into_iter().collect()))
}

async fn raw_produce(
    producer: &FutureProducer,
    topic: &str,
    n: usize,
    key: &str,
    value: &str,
    headers: &[(String, String)],
) -> anyhow::Result<f64> {
    // Distinct keys of the same size, so records spread over partitions like the relay's.
    let keys: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    assert_eq!(keys[0].len(), key.len());
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for k in &keys {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (name, v) in headers {
            h = h.insert(Header {
                key: name,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::to(topic)
            .key(k.as_bytes())
            .payload(value.as_bytes())
            .headers(h);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => anyhow::bail!("raw produce failed: {e}"),
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a relay while `rate` single-row transactions per second are committed for `seconds`;
/// returns p50, p99 and max commit-to-publish latency (ms) and the number of events.
async fn steady(
    pool: &PgPool,
    options: RelayOptions,
    topic: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    // When each row's publication was committed, as the relay reports it.
    let published = Arc::new(Mutex::new(HashMap::<Uuid, DateTime<Utc>>::new()));
    let observer: billing_relay::Observer = {
        let published = published.clone();
        Arc::new(move |ids: &[Uuid]| {
            let now = Utc::now();
            let mut published = published.lock().unwrap_or_else(|e| e.into_inner());
            published.extend(ids.iter().map(|id| (*id, now)));
        })
    };
    let relay = Relay::new(pool.clone(), options)
        .await?
        .on_published(observer);
    let stats = relay.stats();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay.run(cancel.clone()));
    // Warm-up, not measured: the producer's session and the topic's metadata (a real broker
    // takes hundreds of milliseconds for a topic's first record).
    let warm = event(topic, BillId::new());
    let mut tx = pool.begin().await?;
    shared::outbox::insert(&mut tx, std::slice::from_ref(&warm)).await?;
    tx.commit().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.published() < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up row was not published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = stats.published();

    // Several writers, each on its own schedule slot, so one slow commit does not delay the
    // others and the offered rate stays steady.
    const WRITERS: u64 = 8;
    let total = rate * seconds;
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        let topic = topic.to_owned();
        writers.push(tokio::spawn(async move {
            let mut committed: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
            let mut i = w;
            while i < total {
                tokio::time::sleep_until(start + period * i as u32).await;
                let e = event(&topic, BillId::new());
                let mut tx = pool.begin().await?;
                shared::outbox::insert(&mut tx, std::slice::from_ref(&e)).await?;
                tx.commit().await?;
                committed.push((e.id.0, Utc::now()));
                i += WRITERS;
            }
            anyhow::Ok(committed)
        }));
    }
    let mut committed = HashMap::new();
    for w in writers {
        committed.extend(w.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.published() - before < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "steady-load rows not all published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    task.await??;

    let published = published.lock().unwrap_or_else(|e| e.into_inner());
    let mut ms: Vec<f64> = published
        .iter()
        .filter_map(|(id, at)| {
            committed
                .get(id)
                .map(|c| (*at - *c).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        })
        .collect();
    let n = ms.len();
    anyhow::ensure!(n as u64 == total, "expected {total} latencies, got {n}");
    let p50 = bench::median(&mut ms);
    let p99 = bench::quantile(&mut ms, 0.99);
    let max = bench::quantile(&mut ms, 1.0);
    Ok((p50, p99, max, n))
}
