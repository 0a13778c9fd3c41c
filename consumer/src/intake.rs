//! Reading `bills.email` and `bills.sms` in a consumer group. Offsets are stored by the
//! application only (`enable.auto.offset.store=false`) and only up to the lowest unfinished
//! record of each partition ([`crate::offsets`]); auto-commit then commits what was stored.
//! Each record takes a permit of the in-flight semaphore before it is read, so intake pauses
//! when `MAX_IN_FLIGHT` records are unfinished.

use crate::claim::ClaimRequest;
use crate::offsets::OffsetTracker;
use crate::outcome::{reason, Outcome};
use crate::pipeline::{Done, OffsetStore, Ticket, ToClaim};
use crate::send::rate_limit::SendLimits;
use anyhow::Context;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use shared::config::Topics;
use shared::domain::Channel;
use shared::events::{BillEvent, SourceRecord};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Forgets revoked partitions, so completions of their records cannot store offsets into a
/// later assignment.
pub struct IntakeContext {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for IntakeContext {}

impl ConsumerContext for IntakeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                t.revoke(e.topic(), e.partition());
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

pub type KafkaConsumer = StreamConsumer<IntakeContext>;

/// Stores offsets in the consumer (committed by auto-commit and at shutdown).
pub struct ConsumerOffsets(pub Arc<KafkaConsumer>);

impl OffsetStore for ConsumerOffsets {
    fn store(&self, points: &[(String, i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in points {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .is_err()
            {
                continue;
            }
        }
        // Fails for a partition that was revoked meanwhile; its new owner re-reads from the
        // last commit, and the claim makes that harmless.
        match self.0.store_offsets(&tpl) {
            Ok(()) => tracing::debug!(?points, "offsets stored"),
            Err(e) => tracing::debug!(error = %e, "storing offsets failed"),
        }
    }
}

/// Builds the consumer and subscribes to the email and SMS topics.
pub async fn subscribe(
    brokers: &str,
    group: &str,
    topics: &Topics,
    tracker: Arc<Mutex<OffsetTracker>>,
) -> anyhow::Result<Arc<KafkaConsumer>> {
    let mut cfg: ClientConfig = shared::kafka::manual_store_consumer_config(brokers, group);
    // librdkafka prefetches; bound it so memory stays flat whatever the backlog.
    cfg.set("queued.max.messages.kbytes", "16384");
    let consumer: KafkaConsumer =
        tokio::task::spawn_blocking(move || cfg.create_with_context(IntakeContext { tracker }))
            .await
            .context("consumer builder task panicked")?
            .context("failed to create the Kafka consumer")?;
    consumer
        .subscribe(&[topics.email.as_str(), topics.sms.as_str()])
        .context("failed to subscribe to the bill topics")?;
    Ok(Arc::new(consumer))
}

/// The reading end of the pipeline.
pub struct Intake {
    pub consumer: Arc<KafkaConsumer>,
    pub topics: Topics,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub permits: Arc<Semaphore>,
    pub limits: Arc<SendLimits>,
    pub claim_tx: mpsc::Sender<ToClaim>,
    pub done_tx: mpsc::Sender<Done>,
}

/// Reads records until `cancel` fires, dispatching each to the claimer (or, if it is poison,
/// straight to the writer).
pub async fn run(intake: Intake, cancel: CancellationToken) -> anyhow::Result<()> {
    let Intake {
        consumer,
        topics,
        tracker,
        permits,
        limits,
        claim_tx,
        done_tx,
    } = intake;
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            p = permits.clone().acquire_owned() => p.context("in-flight semaphore closed")?,
        };
        let msg = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let source = SourceRecord {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
        };
        let generation = tracker.lock().unwrap_or_else(|p| p.into_inner()).begin(
            &source.topic,
            source.partition,
            source.offset,
        );
        let ticket = Ticket {
            source,
            generation,
            permit,
        };
        match parse(msg.payload(), msg.key(), &ticket.source.topic, &topics) {
            Ok(request) if limits.channel(request.channel).is_limited() => {
                // Wait for the send's token before claiming, off the intake loop (records
                // finish in any order anyway). Cancelled: the record is dropped unclaimed, its
                // offset is not stored, and it is read again after a restart.
                let (limits, claim_tx, cancel) = (limits.clone(), claim_tx.clone(), cancel.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = limits.channel(request.channel).until_ready() => {
                            let _ = claim_tx.send(ToClaim { ticket, request }).await;
                        }
                    }
                });
            }
            Ok(request) => {
                if claim_tx.send(ToClaim { ticket, request }).await.is_err() {
                    return Ok(());
                }
            }
            Err(outcome) => {
                if done_tx
                    .send(Done {
                        ticket,
                        outcome: *outcome,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// A claim request, or the poison outcome of a record that is not a valid bill event.
fn parse(
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    topic: &str,
    topics: &Topics,
) -> Result<ClaimRequest, Box<Outcome>> {
    let topic_channel = if topic == topics.sms {
        Channel::Sms
    } else {
        Channel::Email
    };
    let key_id = key
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| Uuid::parse_str(k).ok());
    let poison = |error: String| {
        Box::new(Outcome::Poison {
            bill_id: key_id,
            channel: topic_channel,
            reason: reason::POISON_RECORD,
            error,
        })
    };
    let Some(payload) = payload else {
        return Err(poison("the record has no value".into()));
    };
    match serde_json::from_slice::<BillEvent>(payload) {
        Ok(event) => Ok(ClaimRequest {
            bill_id: event.bill_id,
            channel: event.channel,
        }),
        // Position and category only: serde's message can quote the offending value.
        Err(e) => Err(poison(format!(
            "value is not a bill event ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))),
    }
}

/// Commits the stored offsets synchronously (at shutdown).
pub fn commit(consumer: &KafkaConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(e) => tracing::info!(error = %e, "final offset commit had nothing to do or failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_records_say_why_without_quoting_the_value() {
        let topics = Topics::default();
        let outcome = parse(
            Some(b"{\"bill_id\": \"jane@example.com\"}"),
            None,
            "bills.sms",
            &topics,
        )
        .unwrap_err();
        let Outcome::Poison {
            error,
            reason: why,
            channel,
            ..
        } = *outcome
        else {
            panic!("expected poison");
        };
        assert_eq!(why, reason::POISON_RECORD);
        assert_eq!(channel, Channel::Sms);
        assert!(!error.contains("jane"), "{error}");
        assert!(matches!(
            parse(None, None, "bills.email", &topics).map_err(|o| *o),
            Err(Outcome::Poison { .. })
        ));
    }
}
