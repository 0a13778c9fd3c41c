//! A simulated email/SMS provider served over HTTP, for demos, benchmarks and fault tests.
//!
//! It honours `Idempotency-Key` (a key delivered once is answered again with the first
//! message id and counted as a duplicate, never delivered twice), waits a configurable latency
//! without blocking, and injects permanent (422) and transient (503) failures. Addresses at
//! `bounce.test` and numbers ending in `0000` always fail, so tests can force every path.
//!
//! Other crates drive it in-process with [`spawn`], or mount [`router`] themselves.

mod config;
mod routes;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Settings, SimConfig};
pub use routes::{
    email_bounces, router, sms_unreachable, AppState, SendResponse, IDEMPOTENCY_KEY, MAX_KEY_LEN,
};
pub use store::{Channel, ChannelStats, Delivery, Stats, Store};

/// Backlog of the listening socket: bursts of thousands of new connections must not be refused.
const LISTEN_BACKLOG: u32 = 4096;

/// Builds the shared state for [`router`] from a validated config.
pub fn state(config: SimConfig) -> anyhow::Result<AppState> {
    config.validate()?;
    Ok(Arc::new(Store::new(config)))
}

/// Binds `addr` (port 0 picks a free port) with a large backlog.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("failed to create a socket")?;
    socket
        .set_reuseaddr(true)
        .context("failed to set SO_REUSEADDR")?;
    socket
        .set_nodelay(true)
        .context("failed to set TCP_NODELAY")?;
    socket
        .bind(addr)
        .with_context(|| format!("failed to bind {addr}"))?;
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("failed to listen on {addr}"))
}

/// A running simulator; dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    state: AppState,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Binds `addr` and serves the simulator on a background task.
pub async fn spawn(addr: SocketAddr, config: SimConfig) -> anyhow::Result<SimHandle> {
    let state = state(config)?;
    let listener = bind(addr)?;
    let addr = listener
        .local_addr()
        .context("failed to read the bound address")?;
    let stop = CancellationToken::new();
    let app = router(state.clone());
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    });
    Ok(SimHandle {
        addr,
        state,
        stop,
        task: Some(task),
    })
}

impl SimHandle {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{base_url}/v1/email`, what the consumer calls `EMAIL_PROVIDER_URL`.
    pub fn email_url(&self) -> String {
        format!("{}/v1/email", self.base_url())
    }

    /// `{base_url}/v1/sms`, what the consumer calls `SMS_PROVIDER_URL`.
    pub fn sms_url(&self) -> String {
        format!("{}/v1/sms", self.base_url())
    }

    /// Current counters, read in-process.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Every delivery so far, in delivery order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries(None)
    }

    /// Forgets all keys and zeroes the counters.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .context("provider-sim server task panicked")?
                .context("provider-sim server failed")?;
        }
        Ok(())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
