//! The fault suite's harness: the three real binaries as child processes, each
//! reaching PostgreSQL and RabbitMQ through its own fault-injecting proxy; a load
//! driver posting orders the way a careful client does (an `Idempotency-Key` per
//! order, retried on 503 or a broken connection); scenarios that crash, cut and
//! stall while the load runs; and a checker that compares the orders database,
//! the outbox, the invoices database and the queues once everything is quiet.
//!
//! `Break` switches on one of the services' `*_UNSAFE_*` modes (or leaves out the
//! recovery a scenario relies on): run a scenario with it and the checker must
//! report losses, which shows that the scenario can fail.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::options::ExchangeDeleteOptions;
use plumbing::{broker::short_string, db::Database};
use tokio::{sync::Semaphore, task::JoinSet};
use uuid::Uuid;

use crate::{
    Jitter, broker::TestBroker, db::TestDatabase, process::Service, proxy::TcpProxy, server_addr,
    swap_host,
};

/// A client request that takes longer than this counts as hung.
pub const HANG: Duration = Duration::from_secs(15);

/// With the outbox published and the queue empty, an invoice count that has not
/// moved for this long will not move again (longer than any retry backoff).
const STALLED: Duration = Duration::from_secs(20);
/// How many of its last log lines each process shows when a scenario fails.
const LOG_TAIL: usize = 30;

/// One of the pipeline's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// orders-api.
    Api,
    /// outbox-relay.
    Relay,
    /// invoices-worker.
    Worker,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Api => "orders-api",
            Role::Relay => "outbox-relay",
            Role::Worker => "invoices-worker",
        }
    }
}

/// A way to break a guarantee, to show that a scenario can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// Nothing broken: the real pipeline.
    None,
    /// `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT` on the API.
    ApiRepliesBeforeCommit,
    /// `RELAY_UNSAFE_MARK_BEFORE_PUBLISH` on the relays.
    RelayMarksBeforePublish,
    /// `WORKER_UNSAFE_ACK_BEFORE_COMMIT` on the worker.
    WorkerAcksBeforeCommit,
    /// The operator never replays the outbox after the broker lost messages.
    NoReplay,
}

impl Break {
    /// The service variable that switches it on, if it is one.
    fn variable(self, role: Role) -> Option<&'static str> {
        match (self, role) {
            (Break::ApiRepliesBeforeCommit, Role::Api) => Some("ORDERS_UNSAFE_REPLY_BEFORE_COMMIT"),
            (Break::RelayMarksBeforePublish, Role::Relay) => {
                Some("RELAY_UNSAFE_MARK_BEFORE_PUBLISH")
            }
            (Break::WorkerAcksBeforeCommit, Role::Worker) => {
                Some("WORKER_UNSAFE_ACK_BEFORE_COMMIT")
            }
            _ => None,
        }
    }
}

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
            Role::Api => env.push(("DATABASE_URL", self.orders.url_via(self.api_db.addr))),
            Role::Relay => env.extend([
                ("DATABASE_URL", self.orders.url_via(self.relay_db.addr)),
                (
                    "BROKER_URL",
                    swap_host(&self.broker.url, self.relay_broker.addr),
                ),
                ("BROKER_NAMESPACE", self.broker.namespace.clone()),
            ]),
            Role::Worker => env.extend([
                ("DATABASE_URL", self.invoices.url_via(self.worker_db.addr)),
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

    /// Waits until the pipeline is quiet (outbox published, every order invoiced,
    /// queue empty), stops every process gracefully, then checks the invariants.
    pub async fn settle(mut self, scenario: &str, load: LoadReport, limit: Duration) -> Tally {
        let started = Instant::now();
        let orders = self.orders.client().await;
        let invoices = self.invoices.client().await;
        let queue = self.broker.topology.order_created_queue.clone();
        let mut quiet = false;
        // An invoice count that stopped moving with nothing left to deliver
        // means the rest is lost: no need to wait for the limit.
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
            if unpublished == 0 && self.broker.ready_count(&queue).await == 0 {
                if invoiced >= stored {
                    quiet = true;
                    break;
                }
                if last_invoiced.1.elapsed() > STALLED {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quiesce = started.elapsed();
        if !quiet {
            self.print_log_tails(scenario);
        }
        // Stop in pipeline order, the worker last; a message a worker held
        // unacknowledged goes back to the queue when it stops.
        for index in 0..self.slots.len() {
            let role = self.slots[index].role;
            let nth = self.slots[..index]
                .iter()
                .filter(|s| s.role == role)
                .count();
            self.terminate(role, nth).await;
        }

        let mut violations = std::mem::take(&mut self.incidents);
        if !quiet {
            violations.push(if quiesce < limit {
                format!("invoices stopped coming after {quiesce:.0?}, before all orders had one")
            } else {
                format!("not quiet within {limit:?}")
            });
        }
        let stored: HashMap<Uuid, i64> = orders
            .query("SELECT id, amount_cents FROM orders", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let unpublished = self.orders.unpublished().await;
        let mut invoiced: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for row in invoices
            .query(
                "SELECT order_id, min(amount_cents), count(*) FROM invoices GROUP BY order_id",
                &[],
            )
            .await
            .unwrap()
        {
            invoiced.insert(row.get(0), (row.get(1), row.get(2)));
        }
        let stuck = self.broker.ready_count(&queue).await;
        let dead_lettered = self
            .broker
            .ready_count(&self.broker.topology.dead_letter_queue)
            .await;

        let mut lost: HashSet<Uuid> = HashSet::new();
        let mut not_stored = 0;
        for (id, cents) in &load.created {
            if !stored.contains_key(id) {
                not_stored += 1;
                lost.insert(*id);
            }
            match invoiced.get(id) {
                None => {
                    lost.insert(*id);
                }
                Some((amount, _)) if amount != cents => violations.push(format!(
                    "order {id}: invoice of {amount} cents for a 201 of {cents}"
                )),
                Some(_) => {}
            }
        }
        for (id, cents) in &stored {
            match invoiced.get(id) {
                None => {
                    lost.insert(*id);
                }
                Some((amount, _)) if amount != cents => violations.push(format!(
                    "order {id}: invoice of {amount} cents for an order of {cents}"
                )),
                Some(_) => {}
            }
        }
        let orphans = invoiced
            .keys()
            .filter(|id| !stored.contains_key(id))
            .count();
        let doubled: i64 = invoiced.values().map(|(_, n)| n - 1).sum();
        if not_stored > 0 {
            violations.push(format!(
                "{not_stored} orders answered 201 were never stored"
            ));
        }
        if !lost.is_empty() {
            violations.push(format!("{} orders have no invoice", lost.len()));
        }
        if doubled > 0 {
            violations.push(format!("{doubled} second invoices"));
        }
        if orphans > 0 {
            violations.push(format!("{orphans} invoices without an order"));
        }
        if unpublished > 0 {
            violations.push(format!("{unpublished} outbox rows never published"));
        }
        if stuck > 0 {
            violations.push(format!("{stuck} messages left in the queue"));
        }
        if dead_lettered > 0 {
            violations.push(format!("{dead_lettered} good messages dead-lettered"));
        }
        if load.hung > 0 {
            violations.push(format!("{} requests hung for {HANG:?}", load.hung));
        }
        for (status, n) in &load.statuses {
            if *status != 201 && *status != 503 {
                violations.push(format!("{n} answers with status {status}"));
            }
        }
        Tally {
            scenario: scenario.to_owned(),
            faults: String::new(),
            sent: load.sent,
            created: load.created.len() as u64,
            unavailable: load.unavailable,
            invoices: invoiced.len() as u64,
            redeliveries_skipped: self.duplicates_skipped,
            retries_replayed: load.replayed,
            dead_lettered: u64::from(dead_lettered),
            lost: lost.len() as u64,
            doubled: u64::try_from(doubled).unwrap_or(0),
            quiesce,
            violations,
        }
    }
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

/// What the load driver saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Orders attempted (each with its own key, however often retried).
    pub sent: u64,
    /// Orders answered 201: id → amount in cents.
    pub created: HashMap<Uuid, i64>,
    /// 201s that were replays of an earlier attempt (the client's retry after a
    /// lost answer; the API created nothing the second time).
    pub replayed: u64,
    /// Final answers by status (201, or what the last attempt got).
    pub statuses: BTreeMap<u16, u64>,
    /// Orders given up after their retries failed on the connection.
    pub unreachable: u64,
    /// 503 answers seen over all attempts (each was retried).
    pub unavailable: u64,
    /// Requests with no answer within [`HANG`].
    pub hung: u64,
    /// Time from the first attempt to the 201, per created order.
    pub latencies: Vec<Duration>,
}

/// How the load driver's clients behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// An `Idempotency-Key` per order, 503s and connection failures retried with
    /// backoff for up to ~15 s: what a client that must not lose orders does.
    Careful,
    /// One plain attempt per order (benchmarks).
    Plain,
}

/// Posts orders at `rate` per second (open loop, at most 256 in flight) for
/// `duration`, as `client`s do.
pub fn drive(
    url: String,
    rate: f64,
    duration: Duration,
    client: Client,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let http = {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(HANG)
                .pool_max_idle_per_host(256)
                .build()
                .unwrap()
        };
        let hung = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(Semaphore::new(256));
        let mut tasks = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = tokio::time::Instant::now() + duration;
        let mut sent: u64 = 0;
        while tokio::time::Instant::now() < deadline {
            ticker.tick().await;
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            sent += 1;
            // Amounts spread over the whole range, deterministic per order.
            let cents = 1 + (sent * 7_919 + sent * sent * 104_729) % 99_999_999;
            let (http, url) = (http.clone(), format!("{url}/orders"));
            let (hung, unavailable) = (hung.clone(), unavailable.clone());
            tasks.spawn(async move {
                let started = Instant::now();
                let outcome = post_order(&http, &url, cents, client, &hung, &unavailable).await;
                let outcome = (outcome, started.elapsed());
                drop(permit);
                outcome
            });
        }
        let mut report = LoadReport {
            sent,
            ..LoadReport::default()
        };
        for (outcome, latency) in tasks.join_all().await {
            match outcome {
                Answer::Created {
                    id,
                    cents,
                    replayed,
                } => {
                    report.created.insert(id, cents);
                    report.latencies.push(latency);
                    report.replayed += u64::from(replayed);
                    *report.statuses.entry(201).or_default() += 1;
                }
                Answer::Status(status) => *report.statuses.entry(status).or_default() += 1,
                Answer::Unreachable => report.unreachable += 1,
            }
        }
        report.hung = hung.load(Ordering::SeqCst);
        report.unavailable = unavailable.load(Ordering::SeqCst);
        report
    })
}

/// The final answer to one order.
enum Answer {
    Created {
        id: Uuid,
        cents: i64,
        replayed: bool,
    },
    Status(u16),
    Unreachable,
}

async fn post_order(
    http: &reqwest::Client,
    url: &str,
    cents: u64,
    client: Client,
    hung: &AtomicU64,
    unavailable: &AtomicU64,
) -> Answer {
    let key = Uuid::new_v4().to_string();
    let attempts = if client == Client::Careful { 12 } else { 1 };
    let body = format!(r#"{{"amount": {}.{:02}}}"#, cents / 100, cents % 100);
    let mut last = Answer::Unreachable;
    let mut delay = Duration::from_millis(50);
    for _ in 0..attempts {
        let mut request = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if client == Client::Careful {
            request = request.header("idempotency-key", &key);
        }
        let result = request.send().await;
        match result {
            Ok(response) if response.status() == 201 => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                let Ok(value) = response.json::<serde_json::Value>().await else {
                    last = Answer::Unreachable;
                    continue;
                };
                let id = value["id"].as_str().and_then(|s| s.parse().ok());
                let stored_cents = value["amount_cents"].as_i64();
                if let (Some(id), Some(stored_cents)) = (id, stored_cents) {
                    assert_eq!(
                        u64::try_from(stored_cents).ok(),
                        Some(cents),
                        "the API answered another amount"
                    );
                    return Answer::Created {
                        id,
                        cents: stored_cents,
                        replayed,
                    };
                }
                return Answer::Status(201);
            }
            Ok(response) if response.status() == 503 => {
                unavailable.fetch_add(1, Ordering::SeqCst);
                last = Answer::Status(503);
            }
            Ok(response) => return Answer::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => {
                hung.fetch_add(1, Ordering::SeqCst);
                last = Answer::Unreachable;
            }
            Err(_) => last = Answer::Unreachable,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    last
}

/// One scenario's line in the tally.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Scenario name (with the break, if any).
    pub scenario: String,
    /// What was done to the pipeline.
    pub faults: String,
    /// Orders the driver attempted.
    pub sent: u64,
    /// Orders answered 201.
    pub created: u64,
    /// 503 answers the clients saw (and retried).
    pub unavailable: u64,
    /// Orders with an invoice.
    pub invoices: u64,
    /// Redelivered messages the workers recognised and skipped.
    pub redeliveries_skipped: u64,
    /// Client retries the API answered from the idempotency record.
    pub retries_replayed: u64,
    /// Messages in the dead-letter queue.
    pub dead_lettered: u64,
    /// Orders (answered 201 or stored) without an invoice.
    pub lost: u64,
    /// Second invoices for one order.
    pub doubled: u64,
    /// From the end of the load until the pipeline was quiet.
    pub quiesce: Duration,
    /// Every invariant that did not hold.
    pub violations: Vec<String>,
}

impl Tally {
    /// Whether every invariant held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The tally as a Markdown table.
#[must_use]
pub fn table(tallies: &[Tally]) -> String {
    let mut out = String::from(
        "| scenario | faults | orders sent | 201s | 503s seen | invoices | duplicates prevented (worker / API) | dead-lettered | lost | doubled | quiesce | result |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for t in tallies {
        let result = if t.passed() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", t.violations.join("; "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.1} s | {} |",
            t.scenario,
            t.faults,
            t.sent,
            t.created,
            t.unavailable,
            t.invoices,
            t.redeliveries_skipped,
            t.retries_replayed,
            t.dead_lettered,
            t.lost,
            t.doubled,
            t.quiesce.as_secs_f64(),
            result
        );
    }
    out
}

/// Load and fault sizes.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Orders per second posted.
    pub rate: f64,
    /// Load duration for most scenarios.
    pub load: Duration,
    /// How long outages last.
    pub outage: Duration,
    /// Longest wait for the pipeline to be quiet afterwards.
    pub quiesce_limit: Duration,
}

impl Size {
    /// The CI variant: a few thousand orders per scenario, a few minutes in all.
    #[must_use]
    pub fn ci() -> Self {
        Self {
            rate: 200.0,
            load: Duration::from_secs(10),
            outage: Duration::from_secs(20),
            quiesce_limit: Duration::from_secs(90),
        }
    }

    /// The soak variant: more load for longer, with more faults.
    #[must_use]
    pub fn soak() -> Self {
        Self {
            rate: 400.0,
            load: Duration::from_secs(60),
            outage: Duration::from_secs(20),
            quiesce_limit: Duration::from_secs(300),
        }
    }
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// RabbitMQ unreachable for the relay and the worker for `outage`.
    BrokerOutage,
    /// The relay SIGKILLed again and again mid-drain, restarted each time.
    RelayKilled,
    /// Two relays; one SIGKILLed mid-drain again and again (each time dead for
    /// half a second), the other running throughout.
    TwoRelaysOneKilled,
    /// The worker SIGKILLed again and again mid-batch, restarted each time.
    WorkerKilled,
    /// The invoices database hangs, then is cut, mid-transaction.
    InvoicesDatabaseCut,
    /// The orders database hangs, then is cut, during POSTs.
    OrdersDatabaseCut,
    /// The broker closes the relay's channel with confirms outstanding.
    ChannelClosed,
    /// The broker loses queued messages; the whole outbox is replayed during load.
    ReplayDuringLoad,
    /// SIGTERM and restart of every process in turn during load.
    RollingRestart,
}

impl Scenario {
    /// All of them, in the tally's order.
    pub const ALL: [Scenario; 9] = [
        Scenario::BrokerOutage,
        Scenario::RelayKilled,
        Scenario::TwoRelaysOneKilled,
        Scenario::WorkerKilled,
        Scenario::InvoicesDatabaseCut,
        Scenario::OrdersDatabaseCut,
        Scenario::ChannelClosed,
        Scenario::ReplayDuringLoad,
        Scenario::RollingRestart,
    ];

    /// Its name on the command line and in the tally.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scenario::BrokerOutage => "broker-outage",
            Scenario::RelayKilled => "relay-killed",
            Scenario::TwoRelaysOneKilled => "two-relays-one-killed",
            Scenario::WorkerKilled => "worker-killed",
            Scenario::InvoicesDatabaseCut => "invoices-db-cut",
            Scenario::OrdersDatabaseCut => "orders-db-cut",
            Scenario::ChannelClosed => "channel-closed",
            Scenario::ReplayDuringLoad => "replay-during-load",
            Scenario::RollingRestart => "rolling-restart",
        }
    }

    /// The scenario called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The break that makes this scenario lose orders: the guarantee it tests.
    #[must_use]
    pub fn breaker(self) -> Break {
        match self {
            Scenario::BrokerOutage
            | Scenario::RelayKilled
            | Scenario::TwoRelaysOneKilled
            | Scenario::ChannelClosed => Break::RelayMarksBeforePublish,
            Scenario::WorkerKilled | Scenario::InvoicesDatabaseCut => Break::WorkerAcksBeforeCommit,
            Scenario::OrdersDatabaseCut | Scenario::RollingRestart => Break::ApiRepliesBeforeCommit,
            Scenario::ReplayDuringLoad => Break::NoReplay,
        }
    }

    fn relays(self) -> usize {
        if self == Scenario::TwoRelaysOneKilled {
            2
        } else {
            1
        }
    }

    fn load_time(self, size: Size) -> Duration {
        match self {
            Scenario::BrokerOutage => size.load.max(size.outage + Duration::from_secs(8)),
            _ => size.load,
        }
    }

    /// Runs the scenario (with `broken`'s guarantee switched off, if any) and
    /// checks the invariants.
    pub async fn run(self, size: Size, broken: bool) -> Tally {
        let broken = if broken { self.breaker() } else { Break::None };
        let mut cluster = Cluster::start(self.relays(), broken).await;
        let load_time = self.load_time(size);
        let load = drive(cluster.api_url(), size.rate, load_time, Client::Careful);
        let started = tokio::time::Instant::now();
        let faults = self.inject(&mut cluster, size, load_time, broken).await;
        let report = load.await.unwrap();
        // Faults end with the load at the latest.
        tokio::time::sleep_until(started + load_time).await;
        let name = if broken == Break::None {
            self.name().to_owned()
        } else {
            format!("{} (broken: {broken:?})", self.name())
        };
        let mut tally = cluster.settle(&name, report, size.quiesce_limit).await;
        tally.faults = faults;
        tally
    }

    /// The fault timeline, run while the load runs.
    async fn inject(
        self,
        c: &mut Cluster,
        size: Size,
        load_time: Duration,
        broken: Break,
    ) -> String {
        let sleep = tokio::time::sleep;
        let started = tokio::time::Instant::now();
        let before_end = |margin: u64| started.elapsed() + Duration::from_secs(margin) < load_time;
        let mut jitter = Jitter::new(0x5eed);
        match self {
            Scenario::BrokerOutage => {
                sleep(Duration::from_secs(3)).await;
                c.relay_broker.cut();
                c.worker_broker.cut();
                sleep(size.outage).await;
                c.relay_broker.restore();
                c.worker_broker.restore();
                format!("broker cut {:?}", size.outage)
            }
            Scenario::RelayKilled => {
                // Slow database round trips widen the window between publish
                // and mark, and inside the claim, where the kills land.
                c.relay_db.set_latency(Duration::from_millis(2));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(300 + jitter.below(900))).await;
                    c.kill(Role::Relay, 0).await;
                    c.restart(Role::Relay, 0).await;
                    kills += 1;
                }
                format!("{kills} SIGKILLs")
            }
            Scenario::TwoRelaysOneKilled => {
                // Relay 0 runs throughout; relay 1 dies mid-drain again and
                // again, and stays dead for a while each time.
                c.relay_db.set_latency(Duration::from_millis(5));
                c.relay_broker.set_latency(Duration::from_millis(5));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(200 + jitter.below(300))).await;
                    c.kill(Role::Relay, 1).await;
                    kills += 1;
                    sleep(Duration::from_millis(300)).await;
                    c.restart(Role::Relay, 1).await;
                }
                format!("{kills} SIGKILLs of one of two")
            }
            Scenario::WorkerKilled => {
                c.worker_db.set_latency(Duration::from_millis(10));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(500 + jitter.below(1000))).await;
                    c.kill(Role::Worker, 0).await;
                    c.restart(Role::Worker, 0).await;
                    kills += 1;
                }
                format!("{kills} SIGKILLs")
            }
            Scenario::InvoicesDatabaseCut => {
                sleep(Duration::from_secs(2)).await;
                c.worker_db.stall();
                sleep(Duration::from_secs(2)).await;
                // Transactions hanging mid-flight are reset; new connections work.
                c.worker_db.restore();
                c.worker_db.reset();
                sleep(Duration::from_secs(1)).await;
                c.worker_db.cut();
                sleep(Duration::from_secs(4)).await;
                c.worker_db.restore();
                "stall 2 s, reset, cut 4 s".to_owned()
            }
            Scenario::OrdersDatabaseCut => {
                sleep(Duration::from_secs(2)).await;
                c.api_db.stall();
                c.relay_db.stall();
                sleep(Duration::from_secs(2)).await;
                c.api_db.cut();
                c.relay_db.cut();
                sleep(Duration::from_secs(4)).await;
                c.api_db.restore();
                c.relay_db.restore();
                "stall 2 s, cut 4 s".to_owned()
            }
            Scenario::ChannelClosed => {
                let mut closes = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(1500 + jitter.below(1000))).await;
                    c.delete_exchange().await;
                    closes += 1;
                }
                format!("{closes} channel closes")
            }
            Scenario::ReplayDuringLoad => {
                // The broker loses what it held: the worker is away while
                // messages pile up, then the queue is purged.
                sleep(Duration::from_secs(2)).await;
                c.worker_broker.cut();
                sleep(Duration::from_secs(3)).await;
                let queue = c.broker.topology.order_created_queue.clone();
                let purged = c.broker.ready_count(&queue).await;
                c.broker.purge(&queue).await;
                c.worker_broker.restore();
                if broken == Break::NoReplay {
                    return format!("{purged} purged, no replay");
                }
                c.replay_everything().await;
                format!("{purged} purged, outbox replayed")
            }
            Scenario::RollingRestart => {
                for role in [Role::Api, Role::Relay, Role::Worker] {
                    sleep(load_time / 4).await;
                    c.terminate(role, 0).await;
                    c.restart(role, 0).await;
                }
                "3 SIGTERMs".to_owned()
            }
        }
    }
}
