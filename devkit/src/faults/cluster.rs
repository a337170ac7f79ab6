//! The pipeline under test: the three real binaries as child processes, each
//! behind its own fault-injecting proxies, and the wait for quiet that ends a
//! scenario.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lapin::options::ExchangeDeleteOptions;
use plumbing::{
    broker::short_string,
    db::{Database, ServiceRole},
};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{Break, Role, check, check::Observed, load::LoadReport, scenario::Tally};
use crate::{
    broker::TestBroker, db::TestDatabase, process::Service, proxy::TcpProxy, server_addr, swap_host,
};

/// With the outbox published and the queue empty, an invoice count that has not
/// moved for this long will not move again (longer than any retry backoff).
const STALLED: Duration = Duration::from_secs(20);
/// How many of its last log lines each process shows when a scenario fails.
const LOG_TAIL: usize = 30;

/// A process slot: its role, fixed port (kept across restarts) and the process.
struct Slot {
    role: Role,
    port: u16,
    service: Option<Service>,
}

/// The pipeline under test: fresh databases, a broker namespace, one proxy per
/// connection path, the API, `relays` relays and the worker.
pub struct Cluster {
    /// The orders database.
    pub orders: TestDatabase,
    /// The invoices database.
    pub invoices: TestDatabase,
    /// The broker namespace.
    pub broker: TestBroker,
    /// The API's path to PostgreSQL.
    pub api_db: TcpProxy,
    /// The relays' path to PostgreSQL.
    pub relay_db: TcpProxy,
    /// The relays' path to RabbitMQ.
    pub relay_broker: TcpProxy,
    /// The worker's path to PostgreSQL.
    pub worker_db: TcpProxy,
    /// The worker's path to RabbitMQ.
    pub worker_broker: TcpProxy,
    /// The issuer of the API's bearer tokens (authentication is on, as shipped).
    pub issuer: crate::auth::Issuer,
    broken: Break,
    slots: Vec<Slot>,
    /// Duplicates the worker processes reported skipping, read before each stop.
    duplicates_skipped: u64,
    /// Things that went wrong outside the final check (e.g. an unclean exit).
    incidents: Vec<String>,
}

impl Cluster {
    /// Starts everything and waits until every process listens.
    pub async fn start(relays: usize, broken: Break) -> Self {
        let (orders, invoices) = tokio::join!(
            TestDatabase::migrated("faults_orders", Database::Orders),
            TestDatabase::migrated("faults_invoices", Database::Invoices),
        );
        let broker = TestBroker::new();
        broker.declare().await;
        let pg_addr = server_addr(&crate::db::server_url(), 5432);
        let amqp_addr = server_addr(&broker.url, 5672);
        let mut cluster = Self {
            api_db: TcpProxy::start(&pg_addr).await,
            relay_db: TcpProxy::start(&pg_addr).await,
            relay_broker: TcpProxy::start(&amqp_addr).await,
            worker_db: TcpProxy::start(&pg_addr).await,
            worker_broker: TcpProxy::start(&amqp_addr).await,
            orders,
            invoices,
            broker,
            issuer: crate::auth::Issuer::new(),
            broken,
            slots: Vec::new(),
            duplicates_skipped: 0,
            incidents: Vec::new(),
        };
        let mut roles = vec![Role::Api];
        roles.extend(std::iter::repeat_n(Role::Relay, relays));
        roles.push(Role::Worker);
        for role in roles {
            cluster.slots.push(Slot {
                role,
                port: crate::free_port(),
                service: None,
            });
        }
        let mut starting = JoinSet::new();
        for slot in &cluster.slots {
            let (name, env) = (slot.role.binary(), cluster.env(slot));
            starting.spawn(async move {
                let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
                Service::spawn(name, &env, echo()).await
            });
        }
        let mut started: Vec<Service> = starting.join_all().await;
        for slot in &mut cluster.slots {
            let at = started
                .iter()
                .position(|s| s.addr.port() == slot.port)
                .unwrap();
            slot.service = Some(started.swap_remove(at));
        }
        cluster
    }

    /// The environment of the process in `slot`.
    fn env(&self, slot: &Slot) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PORT", slot.port.to_string()),
            ("MIGRATE_ON_START", "false".into()),
        ];
        match slot.role {
            // Each service as its own database role, as in production: the
            // fault suite proves that the grants suffice for everything it does.
            Role::Api => {
                env.push((
                    "DATABASE_URL",
                    self.orders
                        .role_url_via(ServiceRole::OrdersApi, self.api_db.addr),
                ));
                env.extend(self.issuer.env());
            }
            Role::Relay => env.extend([
                (
                    "DATABASE_URL",
                    self.orders
                        .role_url_via(ServiceRole::OutboxRelay, self.relay_db.addr),
                ),
                (
                    "BROKER_URL",
                    swap_host(&self.broker.url, self.relay_broker.addr),
                ),
                ("BROKER_NAMESPACE", self.broker.namespace.clone()),
            ]),
            Role::Worker => env.extend([
                (
                    "DATABASE_URL",
                    self.invoices
                        .role_url_via(ServiceRole::InvoicesWorker, self.worker_db.addr),
                ),
                (
                    "BROKER_URL",
                    swap_host(&self.broker.url, self.worker_broker.addr),
                ),
                ("BROKER_NAMESPACE", self.broker.namespace.clone()),
            ]),
        }
        if let Some(variable) = self.broken.variable(slot.role) {
            env.push((variable, "true".into()));
        }
        env
    }

    fn slot_index(&self, role: Role, nth: usize) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == role)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {role:?} #{nth} in this cluster"))
    }

    /// The API's base URL (its port does not change across restarts).
    #[must_use]
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.slots[0].port)
    }

    /// A bearer token for the load, valid longer than any scenario runs.
    #[must_use]
    pub fn token(&self) -> String {
        self.issuer.long_lived_token(crate::auth::TEST_CUSTOMER)
    }

    /// Reads the worker's duplicate counter before it goes away.
    async fn count_duplicates(&mut self, index: usize) {
        if self.slots[index].role != Role::Worker {
            return;
        }
        if let Some(service) = &self.slots[index].service {
            if let Some(n) = metric(&service.base_url(), "invoices_duplicates_total").await {
                self.duplicates_skipped += n as u64;
            }
        }
    }

    /// SIGKILLs the `nth` process of `role` (a crash at whatever moment it is in).
    pub async fn kill(&mut self, role: Role, nth: usize) {
        let index = self.slot_index(role, nth);
        self.count_duplicates(index).await;
        if let Some(mut service) = self.slots[index].service.take() {
            service.kill();
            service.wait(Duration::from_secs(10)).await;
        }
    }

    /// SIGTERMs the `nth` process of `role` and waits for it; an exit other
    /// than 0 is recorded as an incident.
    pub async fn terminate(&mut self, role: Role, nth: usize) {
        let index = self.slot_index(role, nth);
        self.count_duplicates(index).await;
        if let Some(mut service) = self.slots[index].service.take() {
            service.terminate();
            match service.exited_within(Duration::from_secs(40)).await {
                Some(status) if status.success() => {}
                Some(status) => self
                    .incidents
                    .push(format!("{} exited with {status} on SIGTERM", service.name)),
                None => {
                    let logs = service.logs();
                    let tail = logs[logs.len().saturating_sub(5)..].join("\n");
                    self.incidents.push(format!(
                        "{} still running 40 s after SIGTERM; its last lines:\n{tail}",
                        service.name
                    ));
                    service.kill();
                    service.wait(Duration::from_secs(10)).await;
                }
            }
        }
    }

    /// Prints the last lines each running process logged, for a scenario that
    /// did not settle (its processes are about to be stopped).
    fn print_log_tails(&self, scenario: &str) {
        for service in self.slots.iter().filter_map(|s| s.service.as_ref()) {
            let logs = service.logs();
            let tail = logs[logs.len().saturating_sub(LOG_TAIL)..].join("\n");
            eprintln!("{scenario}: the last lines of {}:\n{tail}", service.name);
        }
    }

    /// Starts the `nth` process of `role` again, on its port.
    pub async fn restart(&mut self, role: Role, nth: usize) {
        let index = self.slot_index(role, nth);
        let env = self.env(&self.slots[index]);
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        let service = Service::spawn(role.binary(), &env, echo()).await;
        self.slots[index].service = Some(service);
    }

    /// Deletes the exchange under the relay's feet: its next publish gets a
    /// channel error from the broker while confirms are outstanding.
    pub async fn delete_exchange(&self) {
        let channel = self.broker.channel().await;
        channel
            .exchange_delete(
                short_string(&self.broker.topology.exchange),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }

    /// Runs `outbox-relay replay` over the whole outbox (direct connections).
    pub async fn replay_everything(&mut self) {
        let output = tokio::process::Command::new(crate::process::binary_path("outbox-relay"))
            .args(["replay", "--rate", "20000"])
            .env("DATABASE_URL", &self.orders.url)
            .env("BROKER_URL", &self.broker.url)
            .env("BROKER_NAMESPACE", &self.broker.namespace)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        if !output.status.success() {
            self.incidents.push(format!(
                "replay failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }

    /// Ends a scenario: waits until the pipeline is quiet, stops every process
    /// gracefully, reads what the databases and the queues hold, and checks the
    /// invariants against what the clients were told.
    pub async fn settle(mut self, scenario: &str, load: LoadReport, limit: Duration) -> Tally {
        let quiet = self.wait_until_quiet(limit).await;
        if quiet.is_err() {
            self.print_log_tails(scenario);
        }
        self.stop_all().await;
        let mut violations = std::mem::take(&mut self.incidents);
        let quiesce = match quiet {
            Ok(after) => after,
            Err(NotQuiet::Stalled(after)) => {
                violations.push(format!(
                    "invoices stopped coming after {after:.0?}, before all orders had one"
                ));
                after
            }
            Err(NotQuiet::TimedOut) => {
                violations.push(format!("not quiet within {limit:?}"));
                limit
            }
        };
        let observed = self.observe().await;
        let verdict = check(&load, &observed);
        violations.extend(verdict.violations);
        Tally {
            scenario: scenario.to_owned(),
            faults: String::new(),
            sent: load.sent,
            created: load.created.len() as u64,
            unavailable: load.unavailable,
            invoices: verdict.invoices,
            redeliveries_skipped: self.duplicates_skipped,
            retries_replayed: load.replayed,
            dead_lettered: u64::from(observed.dead_lettered),
            lost: verdict.lost,
            doubled: verdict.doubled,
            quiesce,
            violations,
        }
    }

    /// Waits until the outbox is published, the queue is empty and every stored
    /// order has an invoice; returns how long that took. Gives up early when the
    /// invoice count stops moving with nothing left to deliver: the rest is lost.
    async fn wait_until_quiet(&self, limit: Duration) -> Result<Duration, NotQuiet> {
        let started = Instant::now();
        let orders = self.orders.client().await;
        let invoices = self.invoices.client().await;
        let queue = &self.broker.topology.order_created_queue;
        let mut last_invoiced = (-1, Instant::now());
        while started.elapsed() < limit {
            let row = orders
                .query_one(
                    "SELECT (SELECT count(*) FROM orders),
                            (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
                    &[],
                )
                .await
                .unwrap();
            let (stored, unpublished): (i64, i64) = (row.get(0), row.get(1));
            let invoiced: i64 = invoices
                .query_one("SELECT count(*) FROM invoices", &[])
                .await
                .unwrap()
                .get(0);
            if invoiced != last_invoiced.0 {
                last_invoiced = (invoiced, Instant::now());
            }
            if unpublished == 0 && self.broker.ready_count(queue).await == 0 {
                if invoiced >= stored {
                    return Ok(started.elapsed());
                }
                if last_invoiced.1.elapsed() > STALLED {
                    return Err(NotQuiet::Stalled(started.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(NotQuiet::TimedOut)
    }

    /// Stops every process in pipeline order, the worker last; a message a
    /// worker held unacknowledged goes back to the queue when it stops.
    async fn stop_all(&mut self) {
        for index in 0..self.slots.len() {
            let role = self.slots[index].role;
            let nth = self.slots[..index]
                .iter()
                .filter(|s| s.role == role)
                .count();
            self.terminate(role, nth).await;
        }
    }

    /// What the stopped pipeline holds.
    async fn observe(&self) -> Observed {
        let orders = self.orders.client().await;
        let invoices = self.invoices.client().await;
        let stored: HashMap<Uuid, i64> = orders
            .query("SELECT id, amount_cents FROM orders", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let invoiced = invoices
            .query(
                "SELECT order_id, min(amount_cents), count(*) FROM invoices GROUP BY order_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        Observed {
            stored,
            invoiced,
            unpublished: self.orders.unpublished().await,
            stuck: self
                .broker
                .ready_count(&self.broker.topology.order_created_queue)
                .await,
            dead_lettered: self
                .broker
                .ready_count(&self.broker.topology.dead_letter_queue)
                .await,
        }
    }
}

/// Why the pipeline did not become quiet.
enum NotQuiet {
    /// Invoices stopped coming, after this long, with orders still uninvoiced.
    Stalled(Duration),
    /// It was still busy at the limit.
    TimedOut,
}

/// Whether to print the services' output (`FAULTS_ECHO=1`, for debugging).
fn echo() -> bool {
    std::env::var_os("FAULTS_ECHO").is_some()
}

/// The value of an unlabelled metric on a service's `/metrics`.
pub async fn metric(base_url: &str, name: &str) -> Option<f64> {
    let text = crate::http_client()
        .get(format!("{base_url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
