//! The command line shared by the three binaries: `<binary> [run|serve]` runs the
//! service until SIGTERM/SIGINT, `<binary> migrate` applies its database's
//! migrations and exits. Errors are logged with their whole chain and turn into a
//! non-zero exit code.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, ServiceConfig},
    db::Database,
};

/// A service binary, as its `main` runs it.
pub trait Service: Sized {
    /// Its configuration.
    type Config;
    /// Name in logs and messages.
    const NAME: &'static str;
    /// The database whose migrations `migrate` applies.
    const DATABASE: Database;

    /// Reads the configuration from the environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    fn load_config() -> Result<Self::Config, ConfigError>;

    /// The part of the configuration every service has.
    fn service_config(config: &Self::Config) -> &ServiceConfig;

    /// Prepares the service: database, pool, listening socket.
    fn build(
        config: &Self::Config,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Runs until `shutdown` is cancelled and in-flight work is done.
    fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The whole `main` of a service binary: initializes logs, loads the
/// configuration, dispatches on the first argument, maps errors to an exit code.
pub async fn main<S: Service>() -> ExitCode {
    crate::telemetry::init(S::NAME);
    let result = async {
        let config = S::load_config()?;
        match std::env::args().nth(1).as_deref() {
            None | Some("run" | "serve") => {
                let shutdown = crate::shutdown::on_signal();
                let service = S::build(&config, &shutdown).await?;
                service.run_until_stopped(shutdown).await?;
                tracing::info!("stopped");
                Ok(())
            }
            Some("migrate") => {
                let url = &S::service_config(&config).database_url;
                crate::db::migrate_command(url, S::DATABASE).await?;
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
            crate::telemetry::log_error(&format!("{} failed", S::NAME), &e);
            ExitCode::FAILURE
        }
    }
}
