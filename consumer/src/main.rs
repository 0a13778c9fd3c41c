//! billing-consumer: telemetry, settings, then [`billing_consumer::run`] until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = billing_consumer::Cli::parse();
    if let Some(billing_consumer::Command::Migrate) = cli.command {
        let pool = shared::db::connect(&cli.settings.database).await?;
        shared::db::migrate(&pool).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    tracing::info!(settings = ?cli.settings, "starting billing-consumer");
    billing_consumer::run(cli.settings, shared::shutdown::on_signal()).await
}
