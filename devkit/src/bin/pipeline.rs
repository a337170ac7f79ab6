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
//! When RabbitMQ's management API answers (`BROKER_ADMIN_URL`), the relay and the
//! worker get broker users of their own (`outbox-relay provision-broker`).
//! The API authenticates its callers as shipped: the launcher is their local
//! identity provider, with a new ES256 signing key each run whose JWKS it writes
//! to `dev-auth/jwks.json` beside the binaries (the API's `AUTH_JWKS_URL`), and
//! prints a development token (customer `dev-customer`, valid 12 h) and a `curl`
//! line that uses it.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use devkit::{
    auth::{DEV_AUDIENCE, DEV_CUSTOMER, DEV_ISSUER, Issuer, LONG_RUN},
    process::Service,
};
use outbox_relay::provision::{RELAY_USER, WORKER_USER};
use plumbing::db::{Database, ServiceRole};
use plumbing::management::{Management, ManagementError};

const ORDERS_DB: &str = "postgres://postgres@127.0.0.1:5432/orders";
const INVOICES_DB: &str = "postgres://postgres@127.0.0.1:5432/invoices";
/// The local broker's management API, as its default admin.
const BROKER_ADMIN_URL: &str = "http://guest:guest@127.0.0.1:15672";
/// Development passwords of the services' broker users (the local broker only).
const RELAY_BROKER_PASSWORD: &str = "outbox-relay-dev";
const WORKER_BROKER_PASSWORD: &str = "invoices-worker-dev";

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
    let (relay_broker, worker_broker) = broker_users().await?.unzip();
    let env = |logins: &[(ServiceRole, String)], role: ServiceRole, broker: Option<&String>| {
        let url = logins
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, url)| url.clone())
            .unwrap_or_default();
        let mut env = vec![
            ("DATABASE_URL", url),
            ("MIGRATE_ON_START", "false".to_owned()),
            ("LOG_FORMAT", log_format.clone()),
        ];
        env.extend(broker.map(|url| ("BROKER_URL", url.clone())));
        env
    };
    let issuer = dev_issuer()?;
    println!("pipeline: starting the services, each as its own database role");
    let mut api_env = env(&orders_logins, ServiceRole::OrdersApi, None);
    api_env.extend(issuer.env());
    let api = Service::spawn("orders-api", &api_env, true).await;
    let relay = Service::spawn(
        "outbox-relay",
        &env(
            &orders_logins,
            ServiceRole::OutboxRelay,
            relay_broker.as_ref(),
        ),
        true,
    )
    .await;
    let worker = Service::spawn(
        "invoices-worker",
        &env(
            &invoices_logins,
            ServiceRole::InvoicesWorker,
            worker_broker.as_ref(),
        ),
        true,
    )
    .await;
    let token = issuer.long_lived_token(DEV_CUSTOMER);
    println!(
        "\npipeline running: orders-api {} · outbox-relay {} · invoices-worker {}\n\
         the API's signing keys: {} (a new key each run: tokens of an earlier run are refused)\n\
         a development token for customer {DEV_CUSTOMER}, valid {} h:\n\n{token}\n\n\
         try:  {}\n\
         Ctrl-C stops all three.\n",
        api.base_url(),
        relay.base_url(),
        worker.base_url(),
        issuer.jwks_path().display(),
        LONG_RUN.as_secs() / 3_600,
        devkit::auth::curl_create_order(&api.base_url(), &token),
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

/// The local identity provider: a new signing key, its JWKS written to
/// `dev-auth/` beside the binaries (replacing an earlier run's).
fn dev_issuer() -> anyhow::Result<Issuer> {
    let exe = std::env::current_exe().context("cannot find the launcher's path")?;
    let dir = exe
        .parent()
        .context("the launcher has no directory")?
        .join("dev-auth");
    Issuer::in_dir(&dir, DEV_ISSUER, DEV_AUDIENCE)
}

/// The relay's and the worker's `BROKER_URL`s with broker users of their own,
/// made by `outbox-relay provision-broker` with development passwords. `None`
/// when the management API does not answer: both then use `BROKER_URL`'s user,
/// as said once here.
async fn broker_users() -> anyhow::Result<Option<(String, String)>> {
    let admin_url = plumbing::config::var_or("BROKER_ADMIN_URL", BROKER_ADMIN_URL);
    let broker_url = plumbing::config::var_or("BROKER_URL", plumbing::config::DEFAULT_BROKER_URL);
    match Management::new(&admin_url)?.check().await {
        Ok(()) => {}
        Err(ManagementError::Unreachable { url, .. }) => {
            println!(
                "pipeline: the RabbitMQ management API does not answer at {url}: the relay and \
                 the worker share BROKER_URL's user. For users of their own, enable it \
                 (`rabbitmq-plugins enable rabbitmq_management`) or set BROKER_ADMIN_URL."
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let users = [
        (RELAY_USER, RELAY_BROKER_PASSWORD),
        (WORKER_USER, WORKER_BROKER_PASSWORD),
    ];
    let status = std::process::Command::new(devkit::process::binary_path("outbox-relay"))
        .arg("provision-broker")
        .env("BROKER_ADMIN_URL", &admin_url)
        .env("BROKER_URL", &broker_url)
        .env("RELAY_BROKER_USER", RELAY_USER)
        .env("RELAY_BROKER_PASSWORD", RELAY_BROKER_PASSWORD)
        .env("WORKER_BROKER_USER", WORKER_USER)
        .env("WORKER_BROKER_PASSWORD", WORKER_BROKER_PASSWORD)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "outbox-relay provision-broker failed ({status})"
    );
    let [relay, worker] = users
        .map(|(user, password)| plumbing::broker::with_credentials(&broker_url, user, password));
    Ok(Some((relay?, worker?)))
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
