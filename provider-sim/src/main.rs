//! `provider-sim`: serve the simulated email/SMS provider until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use provider_sim::{bind, router, state, Settings};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    init_tracing();
    let config = settings.sim_config()?;
    tracing::info!(
        addr = %settings.addr,
        latency_ms = settings.latency_ms,
        failure_rate = config.failure_rate,
        transient_rate = config.transient_rate,
        seeded = config.seed.is_some(),
        "provider-sim starting"
    );
    let listener = bind(settings.addr)?;
    axum::serve(listener, router(state(config)?))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("provider-sim server failed")?;
    tracing::info!("provider-sim stopped");
    Ok(())
}

/// `RUST_LOG` (default `info`); `LOG_FORMAT=json` for one JSON object per line.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
