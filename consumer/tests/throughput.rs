//! Throughput of the consumer alone (not a pass/fail test; run it on purpose):
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres BENCH_BILLS=20000 \
//!   cargo test -p billing-consumer --release --test throughput -- --ignored --nocapture
//! ```
//!
//! A backlog of bills is written and published, then one consumer drains it through
//! provider-sim over HTTP with 1 s latency. Prints bills/s and the process's peak RSS.

mod common;

use common::*;
use shared::domain::Channel;
use shared::events::{event_type, BillEvent};
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn a_backlog_drains_at_the_reported_rate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n: usize = std::env::var("BENCH_BILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let latency: u64 = std::env::var("BENCH_LATENCY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let db = format!("consumer_bench_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
        let base = url.rsplit_once('/').unwrap().0;
        let pool = PgPoolOptions::new().max_connections(16).connect(&format!("{base}/{db}")).await.unwrap();
        shared::MIGRATOR.run(&pool).await.unwrap();

        let topics = topics();
        let cluster = broker(&topics, 6);
        let brokers = cluster.bootstrap_servers();
        let sim = provider(latency).await;
        let k = keyring();
        let producer = producer(&brokers);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        for chunk in ids.chunks(1000) {
            let names: Vec<String> = chunk.iter().map(|id| k.encrypt(*id, "name", "Kim Minsu")).collect();
            let emails: Vec<String> = chunk.iter().enumerate().map(|(i, id)| k.encrypt(*id, "email", &format!("u{i}@example.kr"))).collect();
            let phones: Vec<String> = chunk.iter().map(|id| k.encrypt(*id, "phone", "+821012345678")).collect();
            sqlx::query(
                "INSERT INTO bills (id, recipient_name, recipient_email, recipient_phone, billing_period, due_date, currency, total_minor)
                 SELECT id, n, e, p, '2026-11', DATE '2026-12-15', 'KRW', 85000 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) AS t(id, n, e, p)",
            )
            .bind(chunk).bind(&names).bind(&emails).bind(&phones)
            .execute(&pool).await.unwrap();
            sqlx::query("INSERT INTO bill_items (bill_id, position, name, amount_minor) SELECT id, 0, 'Mobile plan', 85000 FROM UNNEST($1::uuid[]) AS id")
                .bind(chunk).execute(&pool).await.unwrap();
            let sends = chunk.iter().map(|id| {
                let event = BillEvent {
                    event_id: Uuid::now_v7(), event_type: event_type::EMAIL_REQUESTED.into(), bill_id: *id,
                    channel: Channel::Email, attempt: 0, replay_count: 0, occurred_at: chrono::Utc::now(), dead_letter: None,
                };
                let value = serde_json::to_vec(&event).unwrap();
                let producer = &producer;
                let topic = topics.email.clone();
                async move { produce(producer, &topic, &id.to_string(), &value).await }
            });
            futures::future::join_all(sends).await;
        }

        let started = Instant::now();
        let consumer = start(settings(&brokers, &topics, &sim, "bench", &["--max-in-flight", "2000"]), &pool).await;
        // Steady state: from 10 % to 90 % of the backlog (excludes the group join and the tail).
        let (mut t10, mut t90) = (None, None);
        loop {
            let done = count(&pool, "SELECT count(*) FROM bills WHERE status IN ('SENT', 'DEAD')").await as usize;
            if t10.is_none() && done >= n / 10 {
                t10 = Some((Instant::now(), done));
            }
            if t90.is_none() && done >= n * 9 / 10 {
                t90 = Some((Instant::now(), done));
            }
            if done >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let ((a, done_a), (b, done_b)) = (t10.unwrap(), t90.unwrap());
        println!("steady state: {:.0} bills/s", (done_b - done_a) as f64 / (b - a).as_secs_f64());
        consumer.stop().await;
        let rss = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let hwm = rss.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?").to_owned();
        println!(
            "consumer drained {n} bills in {secs:.1} s = {:.0} bills/s at {latency} ms provider latency (includes group join); {hwm} (whole test process, incl. provider-sim and broker)",
            n as f64 / secs
        );
        println!("provider stats: {:?}", sim.stats());
        drop(pool);
        sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.unwrap();
    });
}
