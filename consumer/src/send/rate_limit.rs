//! `SEND_RATE_PER_MIN`: a ceiling on provider calls per channel across the process.
//!
//! One pacing task per channel adds a permit to a FIFO semaphore every `60 s / rate` (paced at
//! 99.5 % of the ceiling), and each send takes one. Why not a GCRA limiter such as governor's
//! `until_ready` with thousands of waiters: every waiter re-sleeps on its own, each late wake-up
//! is lost for good, and every token wakes many of them; measured at 20,000/min, 2,000 waiters
//! reached ~16,000/min under load and burned most of a core. Here ticks use
//! `MissedTickBehavior::Burst`, so a tick late by less than one period (timer granularity) is
//! made up rather than lost, while a tick later than that (a stalled runtime) is dropped; one
//! token wakes exactly one waiter; at most one permit is banked while nobody waits. So any window
//! of length W holds at most W / period + 2 sends (one banked permit, one late tick), and with the
//! 0.5 % margin no sliding minute exceeds the ceiling.
//!
//! A record takes its first token *before* its bill is claimed (see [`crate::intake`]): a bill
//! waiting for the limiter must not sit in `SENDING` with a running lease, or the sweeper would
//! hand it back while it waits. Retries take further tokens.

use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

/// Fraction of the ceiling the pacer runs at.
const PACE: f64 = 0.995;

/// One limiter per channel, or none when unlimited.
#[derive(Debug, Default)]
pub struct SendLimiter {
    permits: Option<Arc<Semaphore>>,
}

impl SendLimiter {
    /// Must be called inside a Tokio runtime when `per_minute` is set (it spawns the pacer,
    /// which ends when the limiter is dropped).
    pub fn new(per_minute: Option<u32>) -> Self {
        let Some(n) = per_minute.filter(|n| *n > 0) else {
            return Self::default();
        };
        let period =
            Duration::from_secs_f64(60.0 / (f64::from(n) * PACE)).max(Duration::from_micros(10));
        let permits = Arc::new(Semaphore::new(1));
        tokio::spawn(pace(Arc::downgrade(&permits), period));
        Self {
            permits: Some(permits),
        }
    }

    /// Waits until one more call is allowed. Waiters are served in arrival order.
    pub async fn until_ready(&self) {
        if let Some(p) = &self.permits {
            if let Ok(permit) = p.acquire().await {
                permit.forget();
            }
        }
    }

    /// True when a ceiling is configured.
    pub fn is_limited(&self) -> bool {
        self.permits.is_some()
    }
}

async fn pace(permits: Weak<Semaphore>, period: Duration) {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let scheduled = ticks.tick().await;
        let Some(p) = permits.upgrade() else { return };
        // Make up ticks that are late by less than a period (timer granularity, a busy
        // runtime); drop older ones, so a stall never turns into a burst.
        if scheduled.elapsed() >= period {
            continue;
        }
        // Bank at most one permit while nobody waits: no burst after an idle spell.
        if p.available_permits() == 0 {
            p.add_permits(1);
        }
    }
}

/// The limiter of each channel.
#[derive(Debug, Default)]
pub struct SendLimits {
    pub email: SendLimiter,
    pub sms: SendLimiter,
}

impl SendLimits {
    pub fn new(per_minute: Option<u32>) -> Self {
        Self {
            email: SendLimiter::new(per_minute),
            sms: SendLimiter::new(per_minute),
        }
    }

    pub fn channel(&self, channel: shared::domain::Channel) -> &SendLimiter {
        match channel {
            shared::domain::Channel::Email => &self.email,
            shared::domain::Channel::Sms => &self.sms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unlimited_limiter_never_waits_and_a_limited_one_allows_no_burst() {
        SendLimiter::new(None).until_ready().await;
        let l = SendLimiter::new(Some(60));
        l.until_ready().await; // the one banked permit
        let second = tokio::time::timeout(Duration::from_millis(300), l.until_ready()).await;
        assert!(
            second.is_err(),
            "a second call within the same second must wait"
        );
    }

    #[tokio::test]
    async fn many_waiters_never_get_more_than_the_ceiling() {
        // 6,000/min = 100/s: in one second at most 100 (paced) + 1 (banked) may pass.
        let l = Arc::new(SendLimiter::new(Some(6_000)));
        let passed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiters: Vec<_> = (0..500)
            .map(|_| {
                let (l, passed) = (l.clone(), passed.clone());
                tokio::spawn(async move {
                    l.until_ready().await;
                    passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = passed.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n <= 101,
            "{n} sends passed in one second at a 100/s ceiling"
        );
        assert!(n > 0, "the pacer hands out permits");
        for w in waiters {
            w.abort();
        }
    }

    #[tokio::test]
    async fn the_pacer_stops_when_the_limiter_is_dropped() {
        let l = SendLimiter::new(Some(60_000));
        let weak = Arc::downgrade(l.permits.as_ref().unwrap());
        drop(l);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(weak.upgrade().is_none());
    }
}
