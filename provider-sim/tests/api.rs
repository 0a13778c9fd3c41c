//! Drives a spawned simulator over real HTTP, as the consumer and the end-to-end tests do.

use std::collections::HashSet;
use std::time::Duration;

use provider_sim::{spawn, ChannelStats, Delivery, SendResponse, SimConfig, SimHandle, Stats};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn sim(config: SimConfig) -> SimHandle {
    spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("spawn provider-sim")
}

fn email(to: &str) -> Value {
    json!({ "to": to, "subject": "Your bill for 2026-11", "html": "<p>Hi</p>", "text": "Hi" })
}

fn sms(to: &str) -> Value {
    json!({ "to": to, "text": "Your bill for 2026-11: 12,000 KRW" })
}

async fn post(client: &Client, url: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut req = client.post(url).json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

fn sent(body: Value) -> SendResponse {
    serde_json::from_value(body).expect("send response")
}

#[tokio::test]
async fn a_repeated_key_is_answered_with_the_first_message_id_and_counted_as_a_duplicate() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();

    let (s1, first) = post(
        &client,
        &sim.email_url(),
        Some("bill-1:email:0"),
        &email("a@example.com"),
    )
    .await;
    let (s2, second) = post(
        &client,
        &sim.email_url(),
        Some("bill-1:email:0"),
        &email("a@example.com"),
    )
    .await;

    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let (first, second) = (sent(first), sent(second));
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.message_id, second.message_id);
    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 2,
            delivered: 1,
            duplicates: 1,
            failed: 0
        }
    );
    assert_eq!(sim.deliveries().len(), 1);
}

#[tokio::test]
async fn the_same_key_on_email_and_sms_is_delivered_once_on_each_channel() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();

    let (se, e) = post(
        &client,
        &sim.email_url(),
        Some("k"),
        &email("a@example.com"),
    )
    .await;
    let (ss, s) = post(&client, &sim.sms_url(), Some("k"), &sms("+821012345678")).await;

    assert_eq!((se, ss), (StatusCode::OK, StatusCode::OK));
    assert!(!sent(e).duplicate);
    assert!(!sent(s).duplicate);
    assert_eq!(sim.stats().email.delivered, 1);
    assert_eq!(sim.stats().sms.delivered, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_deliver_exactly_once() {
    let config = SimConfig {
        latency: Duration::from_millis(50),
        ..SimConfig::instant()
    };
    let sim = sim(config).await;
    let client = Client::new();
    let url = sim.email_url();
    let body = email("a@example.com");

    let answers = futures::future::join_all(
        (0..50).map(|_| post(&client, &url, Some("bill-race:email:0"), &body)),
    )
    .await;

    let mut ids = HashSet::new();
    let mut fresh = 0;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK);
        let answer = sent(body);
        fresh += usize::from(!answer.duplicate);
        ids.insert(answer.message_id);
    }
    assert_eq!(fresh, 1, "exactly one request delivers");
    assert_eq!(ids.len(), 1, "every answer carries the first message id");
    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 50,
            delivered: 1,
            duplicates: 49,
            failed: 0
        }
    );
    assert_eq!(sim.deliveries().len(), 1);
}

#[tokio::test]
async fn many_distinct_keys_in_flight_at_once_are_all_delivered() {
    let config = SimConfig {
        latency: Duration::from_millis(50),
        ..SimConfig::instant()
    };
    let sim = sim(config).await;
    let client = Client::new();
    let url = sim.sms_url();
    let body = sms("+821012345678");
    let keys: Vec<String> = (0..500).map(|i| format!("bill-{i}:sms:0")).collect();

    let answers =
        futures::future::join_all(keys.iter().map(|k| post(&client, &url, Some(k), &body))).await;

    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    assert_eq!(sim.stats().sms.delivered, 500);
    let delivered: HashSet<String> = sim.deliveries().into_iter().map(|d| d.key).collect();
    assert_eq!(delivered, keys.into_iter().collect());
}

#[tokio::test]
async fn bounce_test_addresses_always_fail_and_never_mark_the_key_delivered() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();

    for _ in 0..3 {
        let (status, body) = post(
            &client,
            &sim.email_url(),
            Some("bill-b:email:0"),
            &email("kim@bounce.test"),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            json!({ "error": "mailbox unavailable (simulated bounce)" })
        );
    }

    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 3,
            delivered: 0,
            duplicates: 0,
            failed: 3
        }
    );
    assert!(sim.deliveries().is_empty());
}

#[tokio::test]
async fn numbers_ending_in_0000_are_always_unreachable() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();

    let (status, body) = post(
        &client,
        &sim.sms_url(),
        Some("bill-u:sms:0"),
        &sms("+82 10-1234-0000"),
    )
    .await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body, json!({ "error": "number unreachable (simulated)" }));
    assert_eq!(sim.stats().sms.failed, 1);
    assert!(sim.deliveries().is_empty());
}

#[tokio::test]
async fn a_failure_rate_of_one_rejects_every_send() {
    let sim = sim(SimConfig {
        failure_rate: 1.0,
        ..SimConfig::instant()
    })
    .await;
    let client = Client::new();

    for i in 0..20 {
        let key = format!("bill-{i}:email:0");
        let (status, body) = post(
            &client,
            &sim.email_url(),
            Some(&key),
            &email("a@example.com"),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body, json!({ "error": "rejected (simulated failure)" }));
    }

    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 20,
            delivered: 0,
            duplicates: 0,
            failed: 20
        }
    );
}

#[tokio::test]
async fn a_transient_rate_of_one_answers_503_for_every_send() {
    let sim = sim(SimConfig {
        transient_rate: 1.0,
        ..SimConfig::instant()
    })
    .await;
    let client = Client::new();

    let (status, body) = post(&client, &sim.sms_url(), Some("k"), &sms("+821012345678")).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({ "error": "temporarily unavailable (simulated)" })
    );
    assert_eq!(sim.stats().sms.failed, 1);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_sequence_of_outcomes() {
    async fn outcomes(seed: u64) -> Vec<StatusCode> {
        let config = SimConfig {
            failure_rate: 0.3,
            transient_rate: 0.3,
            seed: Some(seed),
            ..SimConfig::instant()
        };
        let sim = sim(config).await;
        let client = Client::new();
        let mut out = Vec::new();
        for i in 0..40 {
            let key = format!("k{i}");
            out.push(
                post(
                    &client,
                    &sim.email_url(),
                    Some(&key),
                    &email("a@example.com"),
                )
                .await
                .0,
            );
        }
        out
    }

    let first = outcomes(7).await;

    assert_eq!(first, outcomes(7).await);
    assert!(first.contains(&StatusCode::OK));
    assert!(first.contains(&StatusCode::UNPROCESSABLE_ENTITY));
    assert!(first.contains(&StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test]
async fn a_missing_empty_or_overlong_key_is_a_400_with_a_json_error() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    let long = "k".repeat(201);

    for key in [None, Some(""), Some("   "), Some(long.as_str())] {
        let (status, body) = post(&client, &sim.email_url(), key, &email("a@example.com")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key {key:?}");
        assert!(
            body["error"].as_str().unwrap().contains("Idempotency-Key"),
            "{body}"
        );
    }
    let (status, _) = post(
        &client,
        &sim.email_url(),
        Some(&"k".repeat(200)),
        &email("a@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "200 characters is still accepted");
    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 5,
            delivered: 1,
            duplicates: 0,
            failed: 0
        }
    );
}

#[tokio::test]
async fn malformed_or_incomplete_json_is_a_4xx_never_a_5xx() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    let bodies = [
        ("/v1/email", "{not json".to_owned()),
        ("/v1/email", String::new()),
        ("/v1/email", json!({ "to": "a@example.com" }).to_string()),
        (
            "/v1/email",
            json!({ "to": 5, "subject": "s", "text": "t" }).to_string(),
        ),
        (
            "/v1/email",
            json!({ "to": "a@example.com", "subject": "s" }).to_string(),
        ),
        (
            "/v1/email",
            json!({ "to": "nobody", "subject": "s", "text": "t" }).to_string(),
        ),
        ("/v1/sms", json!({ "to": "+821012345678" }).to_string()),
        ("/v1/sms", json!([1, 2]).to_string()),
        (
            "/v1/sms",
            json!({ "to": "call me", "text": "t" }).to_string(),
        ),
    ];

    for (path, body) in bodies {
        let resp = client
            .post(format!("{}{path}", sim.base_url()))
            .header("Idempotency-Key", "k")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "{path} {body}: {status}");
        let json: Value = resp.json().await.unwrap();
        assert!(json["error"].is_string(), "{path} {body}: {json}");
    }
    assert!(sim.deliveries().is_empty());
}

#[tokio::test]
async fn stats_json_has_the_documented_shape() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    post(
        &client,
        &sim.email_url(),
        Some("k"),
        &email("a@example.com"),
    )
    .await;

    let body: Value = client
        .get(format!("{}/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let counters = json!({ "requests": 0, "delivered": 0, "duplicates": 0, "failed": 0 });
    let mut expected = json!({ "email": counters, "sms": counters });
    expected["email"]["requests"] = json!(1);
    expected["email"]["delivered"] = json!(1);
    assert_eq!(body, expected);
    let parsed: Stats = serde_json::from_value(body).unwrap();
    assert_eq!(parsed, sim.stats());
}

#[tokio::test]
async fn deliveries_list_keys_and_message_ids_but_no_recipient_data() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    let (_, e) = post(
        &client,
        &sim.email_url(),
        Some("bill-a:email:0"),
        &email("secret@example.com"),
    )
    .await;
    let (_, s) = post(
        &client,
        &sim.sms_url(),
        Some("bill-b:sms:0"),
        &sms("+821099998888"),
    )
    .await;

    let url = format!("{}/v1/deliveries", sim.base_url());
    let raw = client.get(&url).send().await.unwrap().text().await.unwrap();
    let one: Vec<Delivery> = client
        .get(&url)
        .query(&[("key_prefix", "bill-b")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert!(
        !raw.contains("secret") && !raw.contains("99998888"),
        "{raw}"
    );
    let all: Vec<Delivery> = serde_json::from_str(&raw).unwrap();
    let summary: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|d| (d.key.as_str(), d.channel.as_str(), d.message_id.as_str()))
        .collect();
    let (e, s) = (sent(e), sent(s));
    assert_eq!(
        summary,
        [
            ("bill-a:email:0", "email", e.message_id.as_str()),
            ("bill-b:sms:0", "sms", s.message_id.as_str())
        ]
    );
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].key, "bill-b:sms:0");
}

#[tokio::test]
async fn reset_forgets_keys_and_counters() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    post(
        &client,
        &sim.email_url(),
        Some("k"),
        &email("a@example.com"),
    )
    .await;

    let status = client
        .post(format!("{}/reset", sim.base_url()))
        .send()
        .await
        .unwrap()
        .status();
    let (_, again) = post(
        &client,
        &sim.email_url(),
        Some("k"),
        &email("a@example.com"),
    )
    .await;

    assert!(status.is_success());
    assert!(!sent(again).duplicate, "the key was forgotten");
    assert_eq!(
        sim.stats().email,
        ChannelStats {
            requests: 1,
            delivered: 1,
            duplicates: 0,
            failed: 0
        }
    );
}

#[tokio::test]
async fn sends_succeed_with_zero_and_fifty_ms_latency() {
    for ms in [0, 50] {
        let sim = sim(SimConfig {
            latency: Duration::from_millis(ms),
            ..SimConfig::instant()
        })
        .await;
        let client = Client::new();

        let (status, body) = post(&client, &sim.sms_url(), Some("k"), &sms("+821012345678")).await;

        assert_eq!(status, StatusCode::OK, "latency {ms} ms");
        assert!(!sent(body).duplicate);
    }
}

#[tokio::test]
async fn healthz_answers_and_shutdown_stops_the_server() {
    let sim = sim(SimConfig::instant()).await;
    let client = Client::new();
    let url = format!("{}/healthz", sim.base_url());
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    sim.shutdown().await.unwrap();

    let fresh = Client::new();
    assert!(
        fresh.get(&url).send().await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn invalid_rates_are_refused_at_spawn() {
    let result = spawn(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            failure_rate: 2.0,
            ..SimConfig::default()
        },
    )
    .await;

    assert!(result.is_err());
}
