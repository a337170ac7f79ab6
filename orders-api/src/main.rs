//! `orders-api` — serve the API; `orders-api migrate` — apply migrations and exit.

use orders_api::{config::Config, startup::Application};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plumbing::telemetry::init("orders-api");
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            plumbing::telemetry::log_error("orders-api failed", &e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let shutdown = plumbing::shutdown::on_signal();
            let app = Application::build(&config, &shutdown).await?;
            app.run_until_stopped(shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Some("migrate") => {
            plumbing::db::migrate_command(&config.database_url, plumbing::db::Database::Orders)
                .await?;
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; use `serve` (default) or `migrate`")
        }
    }
}
