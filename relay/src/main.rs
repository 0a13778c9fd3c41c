//! `billing-relay`: publishes committed outbox rows to Kafka. Thin entry point over the library:
//! parse settings, set up telemetry, then migrate or run until SIGINT/SIGTERM.

use billing_relay::settings::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::telemetry::init();
    cli.settings.validate()?;
    match cli.command {
        Some(Command::Migrate) => {
            let pool = shared::db::connect(&cli.settings.database).await?;
            shared::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        None => billing_relay::run(cli.settings, shared::shutdown::on_signal()).await,
    }
}
