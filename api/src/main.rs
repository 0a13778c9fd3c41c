//! `billing-api`: parses its settings and runs the chosen command (serve, migrate, openapi).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = billing_api::settings::Cli::parse();
    billing_api::run(cli).await
}
