//! The work on one claimed bill: decrypt the recipient, render, send with retries for
//! transient errors, and say what happened. Nothing here writes to the database; the outcome
//! goes to the batched writer ([`crate::outcome`]).

use crate::claim::ClaimedBill;
use crate::outcome::{Attempt, Outcome};
use crate::render::{BillView, Renderer};
use crate::send::rate_limit::SendLimits;
use crate::send::{Message, Provider, SendError};
use chrono::Utc;
use shared::crypto::Keyring;
use shared::domain::Channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a bill's send needs, shared by all bills in flight.
pub struct Sender {
    pub keyring: Keyring,
    pub renderer: Renderer,
    pub email: Arc<dyn Provider>,
    pub sms: Arc<dyn Provider>,
    /// Shared with intake, which takes each record's first token before the claim.
    pub limits: Arc<SendLimits>,
    /// Retries of a transient error before the channel counts as failed.
    pub max_retries: u32,
    /// First retry delay; doubles per retry.
    pub backoff: Duration,
}

impl Sender {
    /// Delivers one claimed bill on its channel and returns the outcome to record.
    #[tracing::instrument(level = "debug", skip_all, fields(
        bill.id = %bill.id,
        trace_id = bill.traceparent.as_deref().and_then(shared::telemetry::trace_id).unwrap_or(""),
        channel = %bill.channel,
    ))]
    pub async fn process(&self, bill: &ClaimedBill) -> Outcome {
        let attempt = Attempt::of(bill, Utc::now());
        let decrypt = |field: &str, ct: &str| {
            self.keyring
                .decrypt(bill.id, field, ct)
                .map_err(|e| format!("recipient {field}: {e}"))
        };
        let recipient = decrypt("name", &bill.name_ct).and_then(|n| {
            Ok((
                n,
                decrypt("email", &bill.email_ct)?,
                decrypt("phone", &bill.phone_ct)?,
            ))
        });
        let (name, email, phone) = match recipient {
            Ok(r) => r,
            Err(error) => return Outcome::Undecryptable { attempt, error },
        };
        let view = BillView {
            bill_id: bill.id,
            name: &name,
            email: &email,
            phone: &phone,
            billing_period: &bill.billing_period,
            due_date: bill.due_date,
            currency: &bill.currency,
            total_minor: bill.total_minor,
            items: &bill.items,
        };
        let message = match bill.channel {
            Channel::Email => self.renderer.email(&view).map(|r| Message::Email {
                to: email.clone(),
                subject: r.subject,
                html: r.html,
                text: r.text,
            }),
            Channel::Sms => self.renderer.sms(&view).map(|text| Message::Sms {
                to: phone.clone(),
                text,
            }),
        };
        let message = match message {
            Ok(m) => m,
            // The kind only: a template error may quote the template, never the values.
            Err(e) => {
                return Outcome::Failed {
                    attempt,
                    error: format!("render failed: {}", e.kind()),
                }
            }
        };
        match self
            .send_with_retries(&message, &bill.idempotency_key())
            .await
        {
            Ok(()) => Outcome::Sent { attempt },
            Err(error) => Outcome::Failed { attempt, error },
        }
    }

    async fn send_with_retries(&self, message: &Message, key: &str) -> Result<(), String> {
        let channel = message.channel();
        let provider = match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > 1 {
                // the first try's token was taken before the claim
                self.limits.channel(channel).until_ready().await;
            }
            let started = Instant::now();
            let result = provider.send(message, key).await;
            metrics::histogram!(crate::metrics::PROVIDER_LATENCY, "channel" => channel.as_str())
                .record(started.elapsed().as_secs_f64());
            let label = match &result {
                Ok(d) if d.duplicate => "duplicate",
                Ok(_) => "sent",
                Err(SendError::Transient(_)) => "transient",
                Err(SendError::Permanent(_)) => "permanent",
            };
            metrics::counter!(crate::metrics::SENDS, "channel" => channel.as_str(), "outcome" => label).increment(1);
            match result {
                Ok(_) => return Ok(()),
                Err(SendError::Transient(e)) if tries <= self.max_retries => {
                    tracing::debug!(error = %e, tries, "transient provider error; retrying");
                    let base = self.backoff * 2u32.saturating_pow(tries - 1);
                    let jitter = base.mul_f64(rand::random::<f64>() * 0.5);
                    tokio::time::sleep(base + jitter).await;
                }
                Err(SendError::Transient(e)) => {
                    return Err(format!("{channel}: {e} (after {tries} tries)"))
                }
                Err(SendError::Permanent(e)) => return Err(format!("{channel}: {e}")),
            }
        }
    }
}
