//! A realistic billing batch: Korean and international recipients, varied items and
//! currencies, and (optionally) injected failures the provider simulator recognises:
//! addresses at `bounce.test` always bounce, SMS numbers ending in 0000 always fail.

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// What a generated bill is expected to do, for the end-to-end check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Email works (it may still fail at random at SIM_FAILURE_RATE).
    Normal,
    /// Email always bounces: must move to sms (and end SENT, unless SMS fails at random).
    FallsBackToSms,
    /// Both channels always fail: must end DEAD with a DLT record.
    Dies,
}

pub struct GeneratedBill {
    pub external_id: String,
    pub fate: Fate,
    pub email: String,
    pub phone: String,
    pub body: Value,
}

const KOREAN_FAMILY: [&str; 10] = ["김", "이", "박", "최", "정", "강", "조", "윤", "장", "임"];
const KOREAN_GIVEN: [&str; 10] = [
    "민수", "서연", "지훈", "하은", "도윤", "수아", "예준", "지우", "시우", "하윤",
];
const INTL_NAMES: [&str; 10] = [
    "Jane Doe",
    "Liam O'Connor",
    "Zoë Müller",
    "Mateo García",
    "Aiko Tanaka",
    "Olusegun Adeyemi",
    "Priya Sharma",
    "Noah Smith",
    "Chloé Dubois",
    "Ivan Petrov",
];
const INTL_PHONES: [&str; 5] = [
    "+1 415 555 ",
    "+44 20 7946 ",
    "+49 30 901820",
    "+33 1 70 18 ",
    "+81 3 1234 ",
];
const KRW_ITEMS: [(&str, i64, i64); 6] = [
    ("모바일 요금 (5G 무제한)", 55_000, 95_000),
    ("인터넷 기가 요금", 22_000, 38_500),
    ("IPTV 요금", 9_900, 18_700),
    ("단말기 할부금", 15_000, 60_000),
    ("부가서비스", 1_100, 5_500),
    ("전기 요금", 12_000, 150_000),
];
const USD_ITEMS: [(&str, i64, i64); 5] = [
    ("Cloud storage plan", 299, 2_999),
    ("Fibre broadband", 3_999, 8_999),
    ("Mobile plan", 1_500, 6_500),
    ("Streaming bundle", 899, 2_499),
    ("Late fee", 500, 1_500),
];

/// Generates `n` bills. `failures` injects the always-failing recipients (about 3% bounce
/// on email, 1% on both channels).
pub fn generate(run_id: &str, n: usize, failures: bool, seed: u64) -> Vec<GeneratedBill> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let roll = rng.random_range(0..100);
            let fate = match roll {
                0 if failures => Fate::Dies,
                1..=3 if failures => Fate::FallsBackToSms,
                _ => Fate::Normal,
            };
            let korean = rng.random_bool(0.6);
            let (name, mut phone, currency, catalogue): (
                String,
                String,
                &str,
                &[(&str, i64, i64)],
            ) = if korean {
                (
                    format!(
                        "{}{}",
                        KOREAN_FAMILY[rng.random_range(0..10)],
                        KOREAN_GIVEN[rng.random_range(0..10)]
                    ),
                    format!(
                        "010-{:04}-{:04}",
                        rng.random_range(1000..10000),
                        rng.random_range(1..10000)
                    ),
                    "KRW",
                    &KRW_ITEMS,
                )
            } else {
                let prefix = INTL_PHONES[rng.random_range(0..INTL_PHONES.len())];
                (
                    INTL_NAMES[rng.random_range(0..10)].to_owned(),
                    format!("{prefix}{:04}", rng.random_range(1..10000)),
                    "USD",
                    &USD_ITEMS,
                )
            };
            let domain = match fate {
                Fate::Normal => ["example.com", "example.co.kr", "mail.example.org"][i % 3],
                Fate::FallsBackToSms | Fate::Dies => "bounce.test",
            };
            if fate == Fate::Dies {
                phone = format!("{}0000", &phone[..phone.len() - 4]);
            }
            let email = format!("customer{i}.{run_id}@{domain}");
            let count = rng.random_range(1..=5);
            let items: Vec<Value> = (0..count)
                .map(|_| {
                    let (item, lo, hi) = catalogue[rng.random_range(0..catalogue.len())];
                    let amount = if currency == "KRW" {
                        rng.random_range(lo..hi) / 10 * 10
                    } else {
                        rng.random_range(lo..hi)
                    };
                    json!({ "name": item, "amount": amount })
                })
                .collect();
            let external_id = format!("{run_id}-{i}");
            let body = json!({
                "external_id": external_id,
                "recipient": { "name": name, "email": email, "phone": phone },
                "billing_period": "2026-11",
                "due_date": "2026-12-15",
                "currency": currency,
                "items": items,
            });
            GeneratedBill {
                external_id,
                fate,
                email,
                phone,
                body,
            }
        })
        .collect()
}

/// Posts the bills in batches of `batch` through `POST /v1/bills/batch`, calling `on_accepted`
/// after each batch with the number accepted.
pub async fn enqueue(
    http: &reqwest::Client,
    api: &str,
    bills: &[GeneratedBill],
    batch: usize,
    mut on_accepted: impl FnMut(usize),
) -> anyhow::Result<()> {
    for chunk in bills.chunks(batch) {
        let body = json!({ "bills": chunk.iter().map(|b| &b.body).collect::<Vec<_>>() });
        let resp = http
            .post(format!("{api}/v1/bills/batch"))
            .json(&body)
            .send()
            .await
            .context("POST /v1/bills/batch failed")?;
        if resp.status().as_u16() != 202 && resp.status().as_u16() != 200 {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "batch rejected with {status}: {}",
                text.chars().take(500).collect::<String>()
            );
        }
        on_accepted(chunk.len());
    }
    Ok(())
}

/// A bill enqueued on its own with a chosen W3C `traceparent`, to follow through the logs.
#[derive(Debug, Clone)]
pub struct TracedBill {
    pub id: String,
    /// The trace id sent in the request's `traceparent`.
    pub trace_id: String,
    /// The `traceparent` the API answered with (same trace id, the API's own span id).
    pub answered: String,
}

/// Posts one bill through `POST /v1/bills` with a fresh `traceparent` request header.
pub async fn enqueue_traced(
    http: &reqwest::Client,
    api: &str,
    bill: &GeneratedBill,
) -> anyhow::Result<TracedBill> {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let resp = http
        .post(format!("{api}/v1/bills"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&bill.body)
        .send()
        .await
        .context("POST /v1/bills failed")?;
    let status = resp.status();
    let answered = resp
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = resp.json().await.context("POST /v1/bills answer")?;
    if status.as_u16() != 202 {
        bail!("bill rejected with {status}: {body}");
    }
    let id = body["id"]
        .as_str()
        .context("no id in the answer")?
        .to_owned();
    Ok(TracedBill {
        id,
        trace_id,
        answered,
    })
}
