//! The end-to-end checks of `demo --check`: every bill terminal, nothing delivered twice,
//! injected failures ended where they must, a DLT record without personal data for every
//! dead bill, the summary (built from the API's answers) equal to the database, and one bill's
//! trace id followed from the API's `traceparent` answer through the relay and consumer logs.

use super::load::{Fate, GeneratedBill, TracedBill};
use super::summary::{Counts, Summary};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// Runs every check, prints one line each and a closing `passed/failed` line; returns the
/// number that failed.
pub async fn run(
    pool: &PgPool,
    brokers: &str,
    bills: &[GeneratedBill],
    summary: &Summary,
    traced: &TracedBill,
    log_dir: &Path,
) -> anyhow::Result<usize> {
    let mut results: Vec<(String, bool)> = Vec::new();
    let mut check = |name: String, ok: bool| {
        println!("  [{}] {name}", if ok { " ok " } else { "FAIL" });
        results.push((name, ok));
    };

    let db = db_counts(pool).await?;
    let c = &summary.counts;
    check(
        format!(
            "every accepted bill is SENT or DEAD ({} of {})",
            db.terminal(),
            bills.len()
        ),
        db.accepted == bills.len() as i64 && db.terminal() == db.accepted,
    );
    check(format!("summary equals the database ({c:?})"), *c == db);
    check(
        format!(
            "no bill delivered twice (provider duplicates = {})",
            summary.provider.duplicates
        ),
        summary.provider.duplicates == 0,
    );
    check(
        format!(
            "unique provider deliveries equal SENT bills ({} = {})",
            summary.provider.delivered,
            db.sent_email + db.sent_sms
        ),
        summary.provider.delivered == db.sent_email + db.sent_sms,
    );

    let rows: Vec<(String, String, String, uuid::Uuid)> =
        sqlx::query_as("SELECT external_id, status, channel, id FROM bills")
            .fetch_all(pool)
            .await?;
    let by_ext: HashMap<&str, (&str, &str)> = rows
        .iter()
        .map(|(e, s, c, _)| (e.as_str(), (s.as_str(), c.as_str())))
        .collect();
    let wrong: Vec<&str> = bills
        .iter()
        .filter(|b| {
            let got = by_ext.get(b.external_id.as_str()).copied();
            match b.fate {
                Fate::Dies => got != Some(("DEAD", "sms")),
                // SMS may still fail at random (SIM_FAILURE_RATE): on sms and terminal is right.
                Fate::FallsBackToSms => !matches!(got, Some(("SENT" | "DEAD", "sms"))),
                Fate::Normal => got.is_none(),
            }
        })
        .map(|b| b.external_id.as_str())
        .collect();
    let injected = bills.iter().filter(|b| b.fate != Fate::Normal).count();
    check(
        format!(
            "{injected} injected failures fell back to SMS or died as designed ({} wrong)",
            wrong.len()
        ),
        wrong.is_empty(),
    );

    let dead: HashSet<String> = rows
        .iter()
        .filter(|r| r.1 == "DEAD")
        .map(|r| r.3.to_string())
        .collect();
    let dlt = read_dlt(brokers, dead.len()).await?;
    let missing = dead
        .iter()
        .filter(|id| !dlt.keys().any(|k| k == *id))
        .count();
    check(
        format!(
            "every dead bill has a DLT record ({} dead, {missing} missing)",
            dead.len()
        ),
        missing == 0,
    );

    let mut pii_hits = 0;
    let needles: Vec<String> = bills
        .iter()
        .flat_map(|b| {
            [
                b.email.clone(),
                b.phone.clone(),
                b.phone.chars().filter(char::is_ascii_digit).collect(),
            ]
        })
        .collect();
    let dlt_text: String = dlt
        .values()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    for n in &needles {
        if dlt_text.contains(n.as_str()) {
            pii_hits += 1;
        }
    }
    for entry in std::fs::read_dir(log_dir)? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        pii_hits += needles.iter().filter(|n| text.contains(n.as_str())).count();
    }
    check(
        format!("no e-mail or phone in clear in DLT records or service logs ({pii_hits} hits)"),
        pii_hits == 0,
    );

    let answered = shared::telemetry::trace_id(&traced.answered) == Some(traced.trace_id.as_str());
    let relay = trace_lines(&log_dir.join("billing-relay.log"), traced);
    let consumer = trace_lines(&log_dir.join("billing-consumer.log"), traced);
    let outcome = consumer
        .iter()
        .any(|m| matches!(m.as_str(), "bill sent" | "bill dead"));
    check(
        format!(
            "bill {}'s trace id {} is in the API's traceparent answer ({}), {} relay line(s) {:?} and {} consumer line(s) {:?}",
            traced.id,
            traced.trace_id,
            if answered { "yes" } else { "no" },
            relay.len(),
            relay,
            consumer.len(),
            consumer
        ),
        answered && !relay.is_empty() && outcome,
    );

    let failed = results.iter().filter(|r| !r.1).count();
    println!("e2e: {} passed, {failed} failed", results.len() - failed);
    Ok(failed)
}

async fn db_counts(pool: &PgPool) -> anyhow::Result<Counts> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, channel, count(*) FROM bills GROUP BY 1, 2")
            .fetch_all(pool)
            .await?;
    let mut c = Counts::default();
    for (status, channel, n) in rows {
        c.accepted += n;
        match (status.as_str(), channel.as_str()) {
            ("SENT", "email") => c.sent_email += n,
            ("SENT", "sms") => c.sent_sms += n,
            ("DEAD", _) => c.dead += n,
            ("PENDING", _) => c.pending += n,
            ("SENDING", _) => c.sending += n,
            _ => {}
        }
        if channel == "sms" {
            c.fallback += n;
        }
    }
    c.outbox_backlog = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
        .fetch_one(pool)
        .await?;
    Ok(c)
}

/// Reads `bills.dlt` from the beginning until `expected` distinct keys were seen (or 60 s),
/// returning key -> record values.
async fn read_dlt(brokers: &str, expected: usize) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let group = format!("e2e-dlt-{}", uuid::Uuid::now_v7());
    let consumer: StreamConsumer =
        shared::kafka::create(shared::kafka::manual_store_consumer_config(brokers, &group)).await?;
    consumer.subscribe(&["bills.dlt"])?;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let value = m
                    .payload()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                seen.entry(key).or_default().push(value);
            }
            Ok(Err(e)) => anyhow::bail!("reading bills.dlt failed: {e}"),
            Err(_) => break,
        }
    }
    Ok(seen)
}

/// The messages of the JSON log lines in `path` that carry both the traced bill's `bill.id` and
/// its `trace_id`, as event fields or as fields of the current span.
fn trace_lines(path: &Path, traced: &TracedBill) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |line: &serde_json::Value, name: &str| -> Option<String> {
        [&line[name], &line["span"][name], &line["fields"][name]]
            .into_iter()
            .find_map(|v| v.as_str().map(str::to_owned))
    };
    text.lines()
        .filter(|l| l.contains(traced.trace_id.as_str()))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|line| {
            field(line, "bill.id").as_deref() == Some(traced.id.as_str())
                && field(line, "trace_id").as_deref() == Some(traced.trace_id.as_str())
        })
        .map(|line| field(&line, "message").unwrap_or_default())
        .collect()
}
