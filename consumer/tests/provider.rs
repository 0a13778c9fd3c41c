//! The HTTP provider client against provider-sim: what counts as delivered, transient and
//! permanent, and that the idempotency key makes a re-send harmless.

use billing_consumer::send::http::HttpProvider;
use billing_consumer::send::{Message, Provider, SendError};
use provider_sim::SimConfig;
use std::time::Duration;

fn email(to: &str) -> Message {
    Message::Email {
        to: to.into(),
        subject: "Your bill".into(),
        html: "<p>Hi</p>".into(),
        text: "Hi".into(),
    }
}

async fn sim(config: SimConfig) -> provider_sim::SimHandle {
    provider_sim::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn quiet() -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(1),
        failure_rate: 0.0,
        transient_rate: 0.0,
        seed: Some(1),
    }
}

#[tokio::test]
async fn a_re_send_with_the_same_key_is_answered_as_a_duplicate_and_not_delivered_again() {
    let sim = sim(quiet()).await;
    let client = HttpProvider::new(&sim.email_url(), Duration::from_secs(5), 4).unwrap();
    let first = client
        .send(&email("kim@example.kr"), "b1:email:0")
        .await
        .unwrap();
    let again = client
        .send(&email("kim@example.kr"), "b1:email:0")
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    let stats = sim.stats();
    assert_eq!((stats.email.delivered, stats.email.duplicates), (1, 1));
}

#[tokio::test]
async fn a_bounce_is_permanent_and_its_error_does_not_name_the_recipient() {
    let sim = sim(quiet()).await;
    let client = HttpProvider::new(&sim.email_url(), Duration::from_secs(5), 4).unwrap();
    let err = client
        .send(&email("jane@bounce.test"), "b2:email:0")
        .await
        .unwrap_err();
    let SendError::Permanent(text) = err else {
        panic!("expected permanent, got {err:?}")
    };
    assert!(text.starts_with("HTTP 422"), "{text}");
    assert!(!text.contains("jane"), "{text}");
}

#[tokio::test]
async fn unavailability_and_unreachable_providers_are_transient() {
    let sim = sim(SimConfig {
        transient_rate: 1.0,
        ..quiet()
    })
    .await;
    let client = HttpProvider::new(&sim.sms_url(), Duration::from_secs(5), 4).unwrap();
    let sms = Message::Sms {
        to: "+821012345678".into(),
        text: "bill".into(),
    };
    assert!(matches!(
        client.send(&sms, "b3:sms:0").await,
        Err(SendError::Transient(_))
    ));
    let nowhere =
        HttpProvider::new("http://127.0.0.1:9/v1/sms", Duration::from_secs(2), 4).unwrap();
    assert!(matches!(
        nowhere.send(&sms, "b3:sms:0").await,
        Err(SendError::Transient(_))
    ));
}
