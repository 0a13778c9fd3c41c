//! Progress while the batch drains, and the closing summary, read from the platform's own
//! answers (`GET /v1/stats`, provider-sim's `GET /stats`) and from Postgres for latencies.

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Counts as the API reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub accepted: i64,
    pub pending: i64,
    pub sending: i64,
    pub sent_email: i64,
    pub sent_sms: i64,
    /// Bills that moved to SMS (sent, pending or dead on the sms channel).
    pub fallback: i64,
    pub dead: i64,
    pub outbox_backlog: i64,
}

impl Counts {
    pub fn terminal(&self) -> i64 {
        self.sent_email + self.sent_sms + self.dead
    }

    pub fn from_stats(stats: &Value) -> Self {
        let mut c = Counts {
            accepted: stats["bills"]["total"].as_i64().unwrap_or(0),
            ..Self::default()
        };
        for row in stats["bills"]["by_status_and_channel"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let n = row["count"].as_i64().unwrap_or(0);
            match (row["status"].as_str(), row["channel"].as_str()) {
                (Some("SENT"), Some("email")) => c.sent_email += n,
                (Some("SENT"), Some("sms")) => c.sent_sms += n,
                (Some("DEAD"), _) => c.dead += n,
                (Some("PENDING"), _) => c.pending += n,
                (Some("SENDING"), _) => c.sending += n,
                _ => {}
            }
            if row["channel"].as_str() == Some("sms") {
                c.fallback += n;
            }
        }
        c.outbox_backlog = stats["outbox"]["backlog"].as_i64().unwrap_or(0);
        c
    }
}

pub async fn fetch_counts(http: &reqwest::Client, api: &str) -> anyhow::Result<Counts> {
    let stats: Value = http
        .get(format!("{api}/v1/stats"))
        .send()
        .await
        .context("GET /v1/stats failed")?
        .json()
        .await?;
    Ok(Counts::from_stats(&stats))
}

/// provider-sim's counters, summed over channels.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ProviderCounts {
    pub requests: i64,
    pub delivered: i64,
    pub duplicates: i64,
    pub failed: i64,
}

pub async fn fetch_provider(http: &reqwest::Client, sim: &str) -> anyhow::Result<ProviderCounts> {
    let v: Value = http
        .get(format!("{sim}/stats"))
        .send()
        .await?
        .json()
        .await?;
    let mut p = ProviderCounts::default();
    for ch in ["email", "sms"] {
        p.requests += v[ch]["requests"].as_i64().unwrap_or(0);
        p.delivered += v[ch]["delivered"].as_i64().unwrap_or(0);
        p.duplicates += v[ch]["duplicates"].as_i64().unwrap_or(0);
        p.failed += v[ch]["failed"].as_i64().unwrap_or(0);
    }
    Ok(p)
}

/// The bars of the drain: accepted / published / sent / fallback / dead.
pub struct Bars {
    pub accepted: ProgressBar,
    published: ProgressBar,
    sent: ProgressBar,
    fallback: ProgressBar,
    dead: ProgressBar,
}

impl Bars {
    pub fn new(total: u64, hidden: bool) -> Self {
        let multi = MultiProgress::new();
        if hidden {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:40.cyan/blue}] {pos:>7}/{len:7} {per_sec:>12}",
        )
        .expect("static template")
        .progress_chars("=> ");
        let bar = |name: &str| {
            let b = multi.add(ProgressBar::new(total));
            b.set_style(style.clone());
            b.set_prefix(name.to_owned());
            b
        };
        Self {
            accepted: bar("accepted"),
            published: bar("published"),
            sent: bar("sent"),
            fallback: bar("fallback"),
            dead: bar("dead"),
        }
    }

    pub fn update(&self, c: &Counts) {
        self.published
            .set_position((c.accepted - c.outbox_backlog).max(0) as u64);
        self.sent.set_position((c.sent_email + c.sent_sms) as u64);
        self.fallback.set_position(c.fallback as u64);
        self.dead.set_position(c.dead as u64);
    }

    pub fn finish(&self) {
        for b in [
            &self.accepted,
            &self.published,
            &self.sent,
            &self.fallback,
            &self.dead,
        ] {
            b.finish();
        }
    }
}

/// Polls until every accepted bill is terminal or `timeout` passes.
pub async fn drain(
    http: &reqwest::Client,
    api: &str,
    expected: i64,
    bars: &Bars,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Counts> {
    let deadline = Instant::now() + timeout;
    loop {
        alive()?;
        let c = fetch_counts(http, api).await?;
        bars.update(&c);
        if c.accepted >= expected && c.terminal() >= expected {
            return Ok(c);
        }
        if Instant::now() > deadline {
            anyhow::bail!("not drained after {timeout:?}: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Enqueue-to-send latency percentiles in milliseconds (from `created_at` to `sent_at`).
pub async fn latency_ms(pool: &PgPool) -> anyhow::Result<(f64, f64)> {
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT EXTRACT(EPOCH FROM sent_at - created_at) * 1000 AS ms FROM bills WHERE status = 'SENT') t",
    )
    .fetch_one(pool)
    .await?;
    Ok((p50.unwrap_or(f64::NAN), p99.unwrap_or(f64::NAN)))
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub counts: Counts,
    pub provider: ProviderCounts,
    pub seconds: f64,
    pub bills_per_second: f64,
    pub enqueue_to_send_p50_ms: f64,
    pub enqueue_to_send_p99_ms: f64,
}

pub fn print(s: &Summary, api: &str) {
    let c = &s.counts;
    println!();
    println!("  outcome                     bills");
    println!("  --------------------------  -------");
    println!("  accepted                    {:>7}", c.accepted);
    println!("  sent by email               {:>7}", c.sent_email);
    println!("  sent by SMS (fallback)      {:>7}", c.sent_sms);
    println!("  dead (in bills.dlt)         {:>7}", c.dead);
    println!("  moved to SMS                {:>7}", c.fallback);
    println!("  --------------------------  -------");
    println!("  drained in                  {:>7.1} s", s.seconds);
    println!(
        "  throughput                  {:>7.0} bills/s",
        s.bills_per_second
    );
    println!(
        "  enqueue -> send p50         {:>7.0} ms",
        s.enqueue_to_send_p50_ms
    );
    println!(
        "  enqueue -> send p99         {:>7.0} ms",
        s.enqueue_to_send_p99_ms
    );
    println!("  provider requests           {:>7}", s.provider.requests);
    println!("  provider deliveries         {:>7}", s.provider.delivered);
    println!("  duplicates refused          {:>7}", s.provider.duplicates);
    println!();
    println!("  Swagger UI: {api}/swagger-ui/");
}
