//! `outbox-relay` — run the relay; `outbox-relay migrate` — apply the orders
//! database's migrations and exit.

use outbox_relay::{config::Config, startup::Application};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plumbing::telemetry::init("outbox-relay");
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            plumbing::telemetry::log_error("outbox-relay failed", &e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match std::env::args().nth(1).as_deref() {
        None | Some("run") => {
            let shutdown = plumbing::shutdown::on_signal();
            let app = Application::build(&config, &shutdown).await?;
            app.run_until_stopped(shutdown).await
        }
        Some("migrate") => {
            plumbing::db::migrate_command(&config.database_url, plumbing::db::Database::Orders)
                .await?;
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; use `run` (default) or `migrate`"),
    }
}
