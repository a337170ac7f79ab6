//! `cargo pipeline`: builds the three services and runs the whole pipeline against
//! the local PostgreSQL and RabbitMQ (migrations included, databases created on
//! first start). Ctrl-C stops everything gracefully.
//!
//! The services read their usual environment (`DATABASE_URL` excepted, see
//! below), so `BROKER_URL`, `RUST_LOG` and the rest can be set as for production.
//! `ORDERS_DATABASE_URL` and `INVOICES_DATABASE_URL` choose the two databases;
//! their user is the migration role (the local superuser by default): it creates
//! and migrates the databases, giving each service's role LOGIN with a password
//! made up for this run, and the services then log in as their own roles, as
//! in production.
//! Their logs are human-readable text when this launcher's output is a terminal
//! (JSON otherwise); `LOG_FORMAT` chooses, as for the services themselves.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use devkit::process::Service;
use plumbing::db::{Database, ServiceRole};

const ORDERS_DB: &str = "postgres://postgres@127.0.0.1:5432/orders";
const INVOICES_DB: &str = "postgres://postgres@127.0.0.1:5432/invoices";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipeline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Installed first, so that an early Ctrl-C still stops the services cleanly.
    let stop = plumbing::shutdown::on_signal();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let orders_db = std::env::var("ORDERS_DATABASE_URL").unwrap_or_else(|_| ORDERS_DB.into());
    let invoices_db = std::env::var("INVOICES_DATABASE_URL").unwrap_or_else(|_| INVOICES_DB.into());
    // Before the build: a server that is not running is said at once, not after
    // the binaries have been linked.
    check_reachable(&orders_db).await?;
    println!("pipeline: building orders-api, outbox-relay and invoices-worker ({profile})");
    devkit::process::build_services()?;

    // The services' stdout is a pipe to this process, so their own `auto` would
    // pick JSON: decide for them from where their lines end up, our stdout.
    let log_format = plumbing::config::var("LOG_FORMAT").unwrap_or_else(|| {
        let terminal = std::io::stdout().is_terminal();
        plumbing::telemetry::LogFormat::auto(terminal)
            .name()
            .to_owned()
    });
    println!("pipeline: migrating both databases (created if missing)");
    let orders_logins = migrate("orders-api", &orders_db, Database::Orders, &log_format)?;
    let invoices_logins = migrate(
        "invoices-worker",
        &invoices_db,
        Database::Invoices,
        &log_format,
    )?;
    let env = |logins: &[(ServiceRole, String)], role: ServiceRole| {
        let url = logins
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, url)| url.clone())
            .unwrap_or_default();
        [
            ("DATABASE_URL", url),
            ("MIGRATE_ON_START", "false".to_owned()),
            ("LOG_FORMAT", log_format.clone()),
        ]
    };
    println!("pipeline: starting the services, each as its own database role");
    let api = Service::spawn(
        "orders-api",
        &env(&orders_logins, ServiceRole::OrdersApi),
        true,
    )
    .await;
    let relay = Service::spawn(
        "outbox-relay",
        &env(&orders_logins, ServiceRole::OutboxRelay),
        true,
    )
    .await;
    let worker = Service::spawn(
        "invoices-worker",
        &env(&invoices_logins, ServiceRole::InvoicesWorker),
        true,
    )
    .await;
    println!(
        "\npipeline running: orders-api {} · outbox-relay {} · invoices-worker {}\n\
         try:  curl -i -X POST {}/orders -H 'content-type: application/json' -d '{{\"amount\": 29.99}}'\n\
         Ctrl-C stops all three.\n",
        api.base_url(),
        relay.base_url(),
        worker.base_url(),
        api.base_url(),
    );

    stop.cancelled().await;
    let mut services = [api, relay, worker];
    // The terminal sends SIGINT to the services too; SIGTERM covers running
    // detached. Stop the API first so that nothing new enters, the worker last.
    for service in &mut services {
        service.terminate();
        let status = service.wait(Duration::from_secs(30)).await;
        println!("{} stopped ({status})", service.name);
    }
    Ok(())
}

/// Runs `<binary> migrate` on `database_url` (as its user, the migration
/// role), giving each service role of `database` LOGIN with a password made up
/// for this run; returns each role's URL.
fn migrate(
    binary: &str,
    database_url: &str,
    database: Database,
    log_format: &str,
) -> anyhow::Result<Vec<(ServiceRole, String)>> {
    let mut command = std::process::Command::new(devkit::process::binary_path(binary));
    command
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("LOG_FORMAT", log_format);
    let mut logins = Vec::new();
    for role in database.service_roles() {
        // Hex digits: nothing to escape in a URL.
        let password = uuid::Uuid::new_v4().simple().to_string();
        let (variable, _) = plumbing::db::role_password(*role);
        command.env(variable, &password);
        let url = devkit::with_login(database_url, role.name(), Some(&password));
        logins.push((*role, url));
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {binary} migrate"))?;
    anyhow::ensure!(status.success(), "{binary} migrate failed ({status})");
    Ok(logins)
}

/// Fails early, with a hint, when PostgreSQL or RabbitMQ cannot be reached.
async fn check_reachable(database_url: &str) -> anyhow::Result<()> {
    let config = plumbing::db::parse_url(database_url)?;
    let host = config.host();
    if tokio::net::TcpStream::connect(&host).await.is_err() {
        anyhow::bail!(
            "PostgreSQL is not reachable at {host}. Start it (Debian: `apt-get install postgresql`, \
             then `pg_ctlcluster 15 main start`) or run `docker compose up -d postgres rabbitmq`."
        );
    }
    let broker = plumbing::config::var_or("BROKER_URL", plumbing::config::DEFAULT_BROKER_URL);
    let broker_host = devkit::server_addr(&broker, 5672);
    if tokio::net::TcpStream::connect(&broker_host).await.is_err() {
        anyhow::bail!(
            "RabbitMQ is not reachable at {broker_host}. Start it (Debian: `apt-get install \
             rabbitmq-server`, then `rabbitmq-server -detached`) or run `docker compose up -d rabbitmq`."
        );
    }
    Ok(())
}
