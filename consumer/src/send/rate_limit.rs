//! `SEND_RATE_PER_MIN`: a ceiling on provider calls per channel across the process. The
//! limiter allows no burst (one call per `60 s / rate`), so no sliding minute ever sees more
//! than the configured number of calls.
//!
//! A record takes its first token *before* its bill is claimed (see [`crate::intake`]): a bill
//! waiting for the limiter must not sit in `SENDING` with a running lease, or the sweeper would
//! hand it back while it waits. Retries take further tokens.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// One limiter per channel, or none when unlimited.
#[derive(Debug, Default)]
pub struct SendLimiter {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl SendLimiter {
    pub fn new(per_minute: Option<u32>) -> Self {
        let limiter = per_minute.filter(|n| *n > 0).and_then(|n| {
            let period = Duration::from_secs(60)
                .checked_div(n)?
                .max(Duration::from_nanos(1));
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(NonZeroU32::MIN)))
        });
        Self { limiter }
    }

    /// Waits until one more call is allowed.
    pub async fn until_ready(&self) {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
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

impl SendLimiter {
    /// True when a ceiling is configured.
    pub fn is_limited(&self) -> bool {
        self.limiter.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unlimited_limiter_never_waits_and_a_limited_one_allows_no_burst() {
        SendLimiter::new(None).until_ready().await;
        let l = SendLimiter::new(Some(60));
        let limiter = l.limiter.as_ref().unwrap();
        assert!(limiter.check().is_ok());
        assert!(
            limiter.check().is_err(),
            "a second call within the same second is refused"
        );
    }
}
