//! The billing REST API: enqueue bills together with their outbox rows, query them, and serve
//! the OpenAPI document and Swagger UI. `main.rs` is a thin shell over [`run`]; tests drive
//! [`startup::router`] directly or spawn an [`startup::Application`] on port 0.

pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod idempotency;
pub mod openapi;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod trace_context;
pub mod validation;
pub mod write;
pub mod writers;

use anyhow::Context;
use settings::{Cli, Command};

/// Runs the command chosen on the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = startup::Application::build(cli.settings).await?;
            tracing::info!(addr = %app.local_addr(), "billing-api listening");
            app.run_until_stopped(shared::shutdown::on_signal()).await
        }
        Command::Migrate => {
            let pool = shared::db::connect(&cli.settings.database).await?;
            shared::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Openapi { out } => {
            let json = openapi::to_pretty_json();
            match out {
                Some(path) => std::fs::write(&path, json)
                    .with_context(|| format!("failed to write {}", path.display())),
                None => {
                    print!("{json}");
                    Ok(())
                }
            }
        }
    }
}
