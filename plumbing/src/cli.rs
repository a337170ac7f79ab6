//! The command line shared by the three binaries: `<binary> [run|serve]` runs the
//! service until SIGTERM/SIGINT, `<binary> migrate` applies its database's
//! migrations and exits. Errors are logged with their whole chain and turn into a
//! non-zero exit code.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::{config::ConfigError, db::Database};

/// A service binary: its name and the database it owns.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// Name in logs and messages.
    pub name: &'static str,
    /// The database whose migrations `migrate` applies.
    pub database: Database,
}

/// Runs the binary: initializes logs, loads the configuration, dispatches on the
/// first argument. `serve` gets the configuration and the shutdown token.
pub async fn main<C, Serve, Fut>(
    binary: Binary,
    load: impl FnOnce() -> Result<C, ConfigError>,
    database_url: impl FnOnce(&C) -> &str,
    serve: Serve,
) -> ExitCode
where
    Serve: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init(binary.name);
    let result = async {
        let config = load()?;
        match std::env::args().nth(1).as_deref() {
            None | Some("run" | "serve") => {
                serve(config, crate::shutdown::on_signal()).await?;
                tracing::info!("stopped");
                Ok(())
            }
            Some("migrate") => {
                crate::db::migrate_command(database_url(&config), binary.database).await?;
                Ok(())
            }
            Some(other) => Err(anyhow::anyhow!(
                "unknown command {other:?}; use `run` (default) or `migrate`"
            )),
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::telemetry::log_error(&format!("{} failed", binary.name), &e);
            ExitCode::FAILURE
        }
    }
}
