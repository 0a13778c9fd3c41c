//! The in-process simulated provider (no `*_PROVIDER_URL` set): waits `SIM_LATENCY_MS`
//! without blocking and fails a `SIM_FAILURE_RATE` fraction of sends permanently, like a
//! bounce. It keeps no state, so it cannot report duplicates.

use super::{Delivered, Message, Provider, SendError};
use futures::future::BoxFuture;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    latency: Duration,
    failure_rate: f64,
}

impl SimulatedProvider {
    pub fn new(latency: Duration, failure_rate: f64) -> Self {
        Self {
            latency,
            failure_rate: failure_rate.clamp(0.0, 1.0),
        }
    }
}

impl Provider for SimulatedProvider {
    fn send<'a>(
        &'a self,
        message: &'a Message,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Delivered, SendError>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            if rand::random::<f64>() < self.failure_rate {
                return Err(SendError::Permanent(format!(
                    "simulated {} failure",
                    message.channel()
                )));
            }
            Ok(Delivered {
                message_id: format!("sim-{key}"),
                duplicate: false,
            })
        })
    }
}
