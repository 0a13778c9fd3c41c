//! In-memory provider state: which idempotency keys were delivered on which channel, the
//! counters behind `/stats`, and the failure dice.
//!
//! Keys live in sharded `Mutex<HashMap>`s so thousands of concurrent requests rarely contend,
//! and the "already delivered?" check, the failure decision and the delivery record happen
//! under one shard lock: two concurrent requests with the same key can never both deliver.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::SimConfig;

const SHARDS: usize = 64;

/// The two channels a provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one channel, as served by `GET /stats`.
///
/// `requests` counts every POST to the channel, including ones refused as bad input, so it
/// can exceed `delivered + duplicates + failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub requests: u64,
    pub delivered: u64,
    /// Requests whose key was already delivered: what a provider without idempotency
    /// would have delivered a second time.
    pub duplicates: u64,
    /// Simulated failures (422 and 503); they do not mark the key delivered.
    pub failed: u64,
}

/// The body of `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub email: ChannelStats,
    pub sms: ChannelStats,
}

impl Stats {
    pub fn channel(&self, channel: Channel) -> &ChannelStats {
        match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
        }
    }
}

/// One delivered message, as listed by `GET /v1/deliveries`; deliberately no recipient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub key: String,
    pub channel: Channel,
    pub message_id: String,
    pub at: DateTime<Utc>,
}

/// What a send request turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        message_id: String,
    },
    Duplicate {
        message_id: String,
    },
    /// Permanent failure (422) with the reason to report.
    Rejected(&'static str),
    /// Transient failure (503).
    Unavailable,
}

/// Failure forced by the recipient, whatever the dice say.
#[derive(Debug, Clone, Copy)]
pub enum ForcedFailure {
    None,
    Rejected(&'static str),
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ChannelStats {
        ChannelStats {
            requests: self.requests.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for c in [
            &self.requests,
            &self.delivered,
            &self.duplicates,
            &self.failed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

struct Record {
    message_id: String,
    at: DateTime<Utc>,
    /// Delivery order, so listings come out in the order things were delivered.
    seq: u64,
}

type Shard = Mutex<HashMap<String, Record>>;

/// All provider state; cheap to share behind an `Arc`.
pub struct Store {
    config: SimConfig,
    hasher: RandomState,
    email: Vec<Shard>,
    sms: Vec<Shard>,
    email_counters: Counters,
    sms_counters: Counters,
    rng: Mutex<StdRng>,
    seq: AtomicU64,
    /// Distinguishes message ids of different simulator processes.
    instance: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a HashMap half-updated in a way that
    // matters for a simulator, so keep serving rather than cascade the panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    pub fn new(config: SimConfig) -> Self {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let instance = rng.random();
        let shards = || (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self {
            config,
            hasher: RandomState::new(),
            email: shards(),
            sms: shards(),
            email_counters: Counters::default(),
            sms_counters: Counters::default(),
            rng: Mutex::new(rng),
            seq: AtomicU64::new(0),
            instance,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn counters(&self, channel: Channel) -> &Counters {
        match channel {
            Channel::Email => &self.email_counters,
            Channel::Sms => &self.sms_counters,
        }
    }

    fn shard(&self, channel: Channel, key: &str) -> &Shard {
        let shards = match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
        };
        // The modulo keeps the value below SHARDS, so the cast cannot truncate.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &shards[index]
    }

    /// Counts a POST to a channel, whatever becomes of it.
    pub fn count_request(&self, channel: Channel) {
        self.counters(channel)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Decides and records the outcome of a send whose latency has already elapsed.
    ///
    /// The whole decision runs under the key's shard lock, so of two concurrent requests with
    /// one key exactly one can deliver and the other sees the first one's message id.
    pub fn send(&self, channel: Channel, key: &str, forced: ForcedFailure) -> Outcome {
        let counters = self.counters(channel);
        let mut shard = lock(self.shard(channel, key));
        let outcome = match shard.entry(key.to_owned()) {
            Entry::Occupied(entry) => {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                Outcome::Duplicate {
                    message_id: entry.get().message_id.clone(),
                }
            }
            Entry::Vacant(entry) => match self.decide(forced) {
                Some(failure) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    failure
                }
                None => {
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let message_id = format!("sim-{channel}-{:08x}-{seq:010}", self.instance);
                    entry.insert(Record {
                        message_id: message_id.clone(),
                        at: Utc::now(),
                        seq,
                    });
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    Outcome::Delivered { message_id }
                }
            },
        };
        drop(shard);
        outcome
    }

    /// `Some(failure)` when this send fails; one die roll splits into 422 / 503 / success.
    fn decide(&self, forced: ForcedFailure) -> Option<Outcome> {
        if let ForcedFailure::Rejected(reason) = forced {
            return Some(Outcome::Rejected(reason));
        }
        let (failure, transient) = (self.config.failure_rate, self.config.transient_rate);
        if failure <= 0.0 && transient <= 0.0 {
            return None;
        }
        let roll: f64 = lock(&self.rng).random();
        if roll < failure {
            Some(Outcome::Rejected("rejected (simulated failure)"))
        } else if roll < failure + transient {
            Some(Outcome::Unavailable)
        } else {
            None
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            email: self.email_counters.snapshot(),
            sms: self.sms_counters.snapshot(),
        }
    }

    /// Every delivery so far, in delivery order; `key_prefix` narrows it (e.g. to one bill).
    pub fn deliveries(&self, key_prefix: Option<&str>) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (channel, shards) in [(Channel::Email, &self.email), (Channel::Sms, &self.sms)] {
            for shard in shards {
                let shard = lock(shard);
                let matching = shard
                    .iter()
                    .filter(|(key, _)| key_prefix.is_none_or(|prefix| key.starts_with(prefix)));
                out.extend(matching.map(|(key, r)| {
                    let delivery = Delivery {
                        key: key.clone(),
                        channel,
                        message_id: r.message_id.clone(),
                        at: r.at,
                    };
                    (r.seq, delivery)
                }));
            }
        }
        out.sort_unstable_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, d)| d).collect()
    }

    /// Forgets every key and zeroes the counters (tests).
    pub fn reset(&self) {
        for shard in self.email.iter().chain(&self.sms) {
            lock(shard).clear();
        }
        self.email_counters.reset();
        self.sms_counters.reset();
    }
}
