//! The command line of the three binaries: `<binary> [run]` runs the service
//! until SIGTERM/SIGINT, `<binary> migrate` applies its database's migrations and
//! exits, `<binary> healthcheck` probes a running one; binaries add operator
//! commands of their own. `--version` and `--help` name the binary, and `--help`
//! says what it does and lists the environment variables it reads. Errors are
//! logged with their whole chain and turn into a non-zero exit code:
//! [`EXIT_CONFIG`] (78) for a configuration error, 1 for any other failure.

use std::{fmt::Write as _, future::Future, process::ExitCode};

use clap::{FromArgMatches as _, Subcommand};

use crate::{
    config::{ConfigError, ServiceConfig, Settings},
    service::Service,
};

/// The exit code of a configuration error (`EX_CONFIG` of `sysexits.h`): a
/// variable that does not parse or check, a database URL or TLS setting the
/// driver cannot use. Retrying the same start cannot help, so an orchestrator or
/// an operator can tell it from a failure that a restart may cure (exit 1).
pub const EXIT_CONFIG: u8 = 78;

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

/// No operator commands: a binary with the base commands only.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum NoCommand {}

/// The variables the logs and traces read (see [`crate::telemetry`]).
const TELEMETRY_VARIABLES: &str = "\
RUST_LOG log levels, e.g. info,outbox_relay=debug (default info)
LOG_FORMAT json, text, or auto: text when stdout is a terminal, JSON lines otherwise (default auto)
OTEL_EXPORTER_OTLP_ENDPOINT collector to export traces to over OTLP/HTTP (default none: trace context is propagated, not exported); the standard OTEL_* variables apply
OTEL_SDK_DISABLED true turns tracing off";

/// The whole `main` of a service binary with the base commands only.
pub async fn main<S: Service>() -> ExitCode {
    main_with::<S, NoCommand, _, _>(|command, _| async move { match command {} }).await
}

/// The whole `main` of a service binary with operator commands `C` of its own:
/// parses the command line, then runs a base command, or `operator` with the
/// command and the configuration. An operator command logs to stderr at `warn`
/// unless `RUST_LOG` says otherwise, so that stdout holds only its output, and
/// prints its error with the whole chain.
pub async fn main_with<S, C, F, Fut>(operator: F) -> ExitCode
where
    S: Service,
    C: Subcommand,
    F: FnOnce(C, S::Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = command::<S, C>().get_matches();
    let base = match matches.subcommand_name() {
        None => Some(BaseCommand::Run),
        Some(name) if BaseCommand::has_subcommand(name) => {
            Some(BaseCommand::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
        }
        Some(_) => None,
    };
    if let Some(base) = base {
        return run_base::<S>(base).await;
    }
    let command = C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::telemetry::init_operator();
    let result = async {
        let config = S::Config::from_env()?;
        operator(command, config).await
    }
    .await;
    exit_code(S::ABOUT.name, result, true)
}

/// The command line of `S` with operator commands `C`: base commands first.
#[must_use]
pub fn command<S: Service, C: Subcommand>() -> clap::Command {
    let about = S::ABOUT;
    let command = clap::Command::new(about.name);
    // The derived subcommands set the command's description to their enum's
    // documentation: the binary's own goes on after them.
    C::augment_subcommands(BaseCommand::augment_subcommands(command))
        .version(about.version)
        .about(about.description)
        .long_about(None)
        .help_template(
            "{name} {version}\n{about-with-newline}\n{usage-heading} {usage}\n\n{all-args}{after-help}",
        )
        .after_help(environment::<S>())
}

/// The `Environment:` section of `--help`: every variable `S` reads, aligned.
fn environment<S: Service>() -> String {
    let about = S::ABOUT;
    let mut lines = ServiceConfig::variables(&S::Config::DEFAULTS, about.database);
    let own = S::Config::VARIABLES.iter().chain([&TELEMETRY_VARIABLES]);
    lines.extend(own.flat_map(|text| text.lines()).map(str::to_owned));
    let entries: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|line| line.trim().split_once(' '))
        .collect();
    let width = entries
        .iter()
        .map(|(name, _)| name.len())
        .filter(|len| *len <= 24)
        .max()
        .unwrap_or(0);
    let mut out = String::from("Environment:\n");
    for (name, meaning) in entries {
        let _ = writeln!(out, "  {name:width$}  {}", meaning.trim());
    }
    out
}

/// Runs one of the base commands.
async fn run_base<S: Service>(command: BaseCommand) -> ExitCode {
    let name = S::ABOUT.name;
    if let BaseCommand::Healthcheck = command {
        return healthcheck::<S>().await;
    }
    let telemetry = crate::telemetry::init(name);
    let result = async {
        let config = S::Config::from_env()?;
        match command {
            BaseCommand::Run => {
                let shutdown = crate::shutdown::on_signal();
                let service = S::build(&config, &shutdown).await?;
                service.run_until_stopped(shutdown).await?;
                tracing::info!("stopped");
            }
            BaseCommand::Migrate => {
                let url = config.service().database_url.expose();
                crate::db::migrate_command(url, S::ABOUT.database).await?;
            }
            BaseCommand::Healthcheck => unreachable!("handled above"),
        }
        Ok(())
    }
    .await;
    telemetry.shutdown().await;
    exit_code(name, result, false)
}

/// `<binary> healthcheck`: probes the service's own `/health`; quiet on success,
/// the reason on stderr otherwise.
async fn healthcheck<S: Service>() -> ExitCode {
    let name = S::ABOUT.name;
    let port = match S::Config::from_env() {
        Ok(config) => config.service().port,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match crate::http::probe_health(port).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{name}: unhealthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(name: &str, result: anyhow::Result<()>, operator: bool) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if operator {
        eprintln!("{name}: error: {e:#}");
    } else {
        crate::telemetry::log_error(&format!("{name} failed"), &e);
    }
    if is_config_error(&e) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `e` comes from the configuration: a [`ConfigError`], or a database
/// URL or TLS setting the driver refused (see [`EXIT_CONFIG`]).
fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<ConfigError>()
            || matches!(
                cause.downcast_ref::<crate::db::DbError>(),
                Some(crate::db::DbError::Url(_) | crate::db::DbError::Tls(_))
            )
    })
}
