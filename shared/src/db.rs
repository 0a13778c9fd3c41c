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
    PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
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
    Ok(PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
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
