//! Waking the relay's loop: a `LISTEN outbox_inserted` connection (writers notify after they
//! commit outbox rows, see `shared::outbox`) bumps a counter every worker watches. A watch channel, not a
//! bare `Notify`, so a wake that arrives while a worker is busy is not lost: the worker sees the
//! counter changed and reads again at once. The loop still polls on an interval, which covers a
//! lost listener connection and rows whose retry time has come (no notification for those).

use crate::backoff::Backoff;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The channel writers notify after committing outbox rows (see `shared::outbox`).
pub const CHANNEL: &str = "outbox_inserted";

/// Listens until `cancel` fires, reconnecting with back-off. After every (re)connect it wakes
/// the workers once, since notifications sent while disconnected are lost.
pub async fn listen(pool: PgPool, wake: watch::Sender<u64>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !cancel.is_cancelled() {
        let mut listener = match connect(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "outbox listener cannot connect; polling meanwhile");
                metrics::counter!("billing_relay_errors_total", "kind" => "listener").increment(1);
                if !backoff.sleep(&cancel).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        wake.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            let received = tokio::select! {
                () = cancel.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(_)) => wake.send_modify(|n| *n = n.wrapping_add(1)),
                // The connection dropped; `try_recv` reconnects on the next call.
                Ok(None) => {
                    tracing::warn!("outbox listener connection lost; reconnecting");
                    wake.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox listener failed; reconnecting");
                    metrics::counter!("billing_relay_errors_total", "kind" => "listener")
                        .increment(1);
                    break;
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
