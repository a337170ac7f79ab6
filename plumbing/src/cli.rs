//! The command line shared by the three binaries: `<binary> [run]` runs the
//! service until SIGTERM/SIGINT, `<binary> migrate` applies its database's
//! migrations and exits; binaries add operator commands of their own. Errors are
//! logged with their whole chain and turn into a non-zero exit code.

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

/// The commands every service binary has.
#[derive(Debug, Clone, Copy, Default, clap::Subcommand)]
pub enum BaseCommand {
    /// Run the service until SIGTERM or SIGINT (the default).
    #[default]
    Run,
    /// Create the database if needed, apply its migrations and exit.
    Migrate,
    /// Exit 0 when the running service's `GET /health` on `PORT` answers 200
    /// (a container health check that needs no curl in the image).
    Healthcheck,
}

/// The command line of a binary that has only the base commands.
#[derive(Debug, clap::Parser)]
#[command(version)]
struct BaseCli {
    #[command(subcommand)]
    command: Option<BaseCommand>,
}

/// The whole `main` of a service binary with only the base commands: parses the
/// command line, initializes logs, runs the command, maps errors to an exit code.
pub async fn main<S: Service>() -> ExitCode {
    let cli = <BaseCli as clap::Parser>::parse_from(std::env::args());
    run_base::<S>(cli.command.unwrap_or_default()).await
}

/// Runs one of the base commands (for binaries with commands of their own).
pub async fn run_base<S: Service>(command: BaseCommand) -> ExitCode {
    if let BaseCommand::Healthcheck = command {
        return healthcheck::<S>().await;
    }
    let telemetry = crate::telemetry::init(S::NAME);
    let result = async {
        let config = S::load_config()?;
        match command {
            BaseCommand::Run => {
                let shutdown = crate::shutdown::on_signal();
                let service = S::build(&config, &shutdown).await?;
                service.run_until_stopped(shutdown).await?;
                tracing::info!("stopped");
            }
            BaseCommand::Migrate => {
                let url = &S::service_config(&config).database_url;
                crate::db::migrate_command(url, S::DATABASE).await?;
            }
            BaseCommand::Healthcheck => unreachable!("handled above"),
        }
        Ok(())
    }
    .await;
    telemetry.shutdown().await;
    exit_code(S::NAME, result, false)
}

/// `<binary> healthcheck`: probes the service's own `/health`; quiet on success,
/// the reason on stderr otherwise.
async fn healthcheck<S: Service>() -> ExitCode {
    let port = match S::load_config() {
        Ok(config) => S::service_config(&config).port,
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    match crate::http::probe_health(port).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{}: unhealthy: {reason}", S::NAME);
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command (status, replay, …): logs go to stderr at `warn`
/// unless `RUST_LOG` says otherwise, so that stdout holds only the command's
/// output.
pub async fn run_operator<S, F, Fut>(command: F) -> ExitCode
where
    S: Service,
    F: FnOnce(S::Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init_operator();
    let result = async {
        let config = S::load_config()?;
        command(config).await
    }
    .await;
    exit_code(S::NAME, result, true)
}

fn exit_code(name: &str, result: anyhow::Result<()>, operator: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if operator => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            crate::telemetry::log_error(&format!("{name} failed"), &e);
            ExitCode::FAILURE
        }
    }
}
