//! Postgres pool construction and migrations.

use crate::config::{redact_url, DatabaseArgs};
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// Opens a pool. Fails with the (redacted) URL in the message when Postgres does not answer.
pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(args.url()).with_context(|| {
        format!(
            "DATABASE_URL is not a valid Postgres URL: {}",
            redact_url(args.url())
        )
    })?;
    pool_options(args)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(session(options))
        .await
        .with_context(|| {
            format!(
                "failed to connect to Postgres at {}",
                redact_url(args.url())
            )
        })
}

/// Like [`connect`] but does not fail when Postgres is down: connections are made on demand,
/// so a service can start, answer `/readyz` with 503, and recover when the database returns.
pub fn connect_lazy(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(args.url()).with_context(|| {
        format!(
            "DATABASE_URL is not a valid Postgres URL: {}",
            redact_url(args.url())
        )
    })?;
    Ok(pool_options(args)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(session(options)))
}

/// Session settings of every service connection. JIT off: it compiles plans whose estimated
/// cost is high, and the relay's and the stats' views over a large outbox cross that line
/// while running in milliseconds (measured: 300 ms of compilation for a 50 ms count).
fn session(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("jit", "off")])
}

/// What every service's pool shares. sqlx's default `test_before_acquire` sends a round trip
/// (a Sync message) to Postgres on every acquire, on top of the one it always sends when a
/// connection is released: a third of the API's CPU per single-bill request and an extra
/// wake-up of a Postgres backend. A connection that broke while idle fails its next statement
/// instead; sqlx then closes it, and every caller already treats a statement error as
/// retriable (the API answers 503, the relay and consumer retry their batch).
fn pool_options(args: &DatabaseArgs) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .test_before_acquire(false)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    crate::MIGRATOR
        .run(pool)
        .await
        .context("failed to apply database migrations")
}

/// True when the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
