//! Live: the relay in steady traffic, over plain TCP on the local PostgreSQL and
//! over TLS (`verify-full`) on a private TLS-only server.
//!
//! Closed loop: wrk (2 threads, 32 connections) posts orders to the API alone,
//! then to the API with the relay, then to the API with the relay and the worker,
//! each step on fresh databases and a fresh broker namespace, and with the
//! previous step's processes stopped so they use no CPU. Over exactly the wrk
//! run: orders stored, orders/s, and CPU µs per stored order of each process
//! (API, relay, worker, the whole PostgreSQL cluster, RabbitMQ). The difference
//! between the first two steps is what the relay costs the database per event;
//! the third step's rate against the first is what the pipeline costs the API.
//!
//! Open loop: orders at a fixed rate through the running pipeline, then the
//! commit→publish latency of their outbox rows (`published_at - created_at`).

use std::time::{Duration, Instant};

use devkit::{
    auth::{Issuer, TEST_CUSTOMER},
    broker::TestBroker,
    db::TestDatabase,
    process::Service,
    tls_postgres::TlsPostgres,
    unique_suffix,
};
use plumbing::db::Database;

use crate::{
    Row, Scale, Section, api::wrk, load::open_loop, named_cpu, parent_pid, process_cpu,
    process_tree_cpu, verdict,
};

/// wrk's connections (over its 2 threads).
const CONNECTIONS: usize = 32;
/// The open-loop generator's keep-alive connections to the API.
const OPEN_LOOP_CONNECTIONS: usize = 64;
/// Settings copied from the local server to the TLS server, so the two differ
/// in the transport and not in how much a commit costs (the TLS server's own
/// default is `fsync=off`, and the local server runs with autovacuum off).
const COPIED_SETTINGS: &[&str] = &[
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "wal_buffers",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "jit",
];

/// Which PostgreSQL the pipeline runs on.
enum Transport {
    /// The shared local server, plain TCP.
    Plain,
    /// A private server that accepts only TLS; the URLs verify its certificate
    /// and name.
    Tls(TlsPostgres),
}

/// A database for one step. On the local server its guard drops it; on the TLS
/// server it goes with the server.
struct Db {
    url: String,
    _shared: Option<TestDatabase>,
}

impl Transport {
    fn label(&self) -> &'static str {
        match self {
            Self::Plain => "plain TCP",
            Self::Tls(_) => "TLS verify-full",
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Self::Plain => "plain_tcp",
            Self::Tls(_) => "tls_verify_full",
        }
    }

    /// A fresh database with `database`'s migrations.
    async fn database(&self, label: &str, database: Database) -> Db {
        match self {
            Self::Plain => {
                let db = TestDatabase::migrated(label, database).await;
                Db {
                    url: db.url.clone(),
                    _shared: Some(db),
                }
            }
            Self::Tls(pg) => {
                let name = format!("t_{label}_{}", unique_suffix());
                let url = verified_url(pg, &name);
                plumbing::db::migrate(&plumbing::db::parse_url(&url).unwrap(), database, &[])
                    .await
                    .unwrap_or_else(|e| panic!("migrating {name} on the TLS server: {e:?}"));
                Db { url, _shared: None }
            }
        }
    }

    /// The cluster's postmaster: its children are the backends and auxiliaries.
    async fn postmaster(&self) -> u32 {
        match self {
            Self::Tls(pg) => pg.postmaster_pid().unwrap(),
            Self::Plain => {
                // The server was not started here: the postmaster is the parent
                // of the backend serving this session.
                let client = connect(&format!("{}/postgres", devkit::db::server_url())).await;
                let backend: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                let backend = u32::try_from(backend).unwrap();
                parent_pid(backend).unwrap_or_else(|| {
                    panic!("no parent of backend {backend}: is the server on another machine?")
                })
            }
        }
    }
}

/// The URL of `database` on the TLS server with the certificate checked against
/// its CA and its name (`localhost`, the one the certificate holds).
fn verified_url(pg: &TlsPostgres, database: &str) -> String {
    pg.localhost_url(
        database,
        &format!("?sslmode=verify-full&sslrootcert={}", pg.file("ca.pem")),
    )
}

/// A session on `url`.
async fn connect(url: &str) -> tokio_postgres::Client {
    plumbing::db::connect(&plumbing::db::parse_url(url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e:?}"))
}

/// The single `bigint` a query returns.
async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The settings of [`COPIED_SETTINGS`] on the server `client` is connected to.
async fn settings(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            &[&COPIED_SETTINGS],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Which processes a closed-loop step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parts {
    Api,
    ApiRelay,
    ApiRelayWorker,
}

impl Parts {
    fn label(self) -> &'static str {
        match self {
            Self::Api => "api alone",
            Self::ApiRelay => "api + relay",
            Self::ApiRelayWorker => "api + relay + worker",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::ApiRelay => "api_relay",
            Self::ApiRelayWorker => "api_relay_worker",
        }
    }
}

/// The services of one step, on their own databases and broker namespace.
struct Pipeline {
    orders: Db,
    _invoices: Option<Db>,
    _broker: TestBroker,
    /// The issuer of the API's tokens, and the one the load sends.
    _issuer: Issuer,
    token: String,
    api: Service,
    relay: Option<Service>,
    worker: Option<Service>,
}

impl Pipeline {
    async fn start(transport: &Transport, parts: Parts) -> Self {
        let orders = transport
            .database("bench_live_orders", Database::Orders)
            .await;
        let invoices = if parts == Parts::ApiRelayWorker {
            Some(
                transport
                    .database("bench_live_invoices", Database::Invoices)
                    .await,
            )
        } else {
            None
        };
        let broker = TestBroker::new();
        broker.declare().await;
        let with = |url: &str| {
            vec![
                ("PORT", "0".to_owned()),
                ("MIGRATE_ON_START", "false".to_owned()),
                ("BROKER_URL", broker.url.clone()),
                ("BROKER_NAMESPACE", broker.namespace.clone()),
                ("DATABASE_URL", url.to_owned()),
            ]
        };
        let api_env = with(&orders.url);
        // Authentication on, as shipped.
        let issuer = Issuer::new();
        let mut authenticated = api_env.clone();
        authenticated.extend(issuer.env());
        let api = Service::spawn("orders-api", &authenticated, false).await;
        let relay = if parts == Parts::Api {
            None
        } else {
            Some(Service::spawn("outbox-relay", &api_env, false).await)
        };
        let worker = match &invoices {
            Some(db) => Some(Service::spawn("invoices-worker", &with(&db.url), false).await),
            None => None,
        };
        Self {
            orders,
            _invoices: invoices,
            _broker: broker,
            token: issuer.long_lived_token(TEST_CUSTOMER),
            _issuer: issuer,
            api,
            relay,
            worker,
        }
    }

    /// Stops every service and waits until they have exited, so none uses CPU
    /// in the next step.
    async fn stop(self) {
        let mut services: Vec<Service> = [Some(self.api), self.relay, self.worker]
            .into_iter()
            .flatten()
            .collect();
        for service in &services {
            service.terminate();
        }
        for service in &mut services {
            if service
                .exited_within(Duration::from_secs(30))
                .await
                .is_none()
            {
                // Still running would skew the next step's CPU figures.
                service.kill();
                let _ = service.exited_within(Duration::from_secs(5)).await;
            }
        }
    }
}

/// CPU seconds a service has used; 0 when it is not running (`process_cpu(None)`
/// would read this process instead).
fn service_cpu(service: Option<&Service>) -> f64 {
    service
        .and_then(Service::pid)
        .map_or(0.0, |pid| process_cpu(Some(pid)))
}

/// CPU seconds used so far by each process of a step.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    api: f64,
    relay: f64,
    worker: f64,
    postgres: f64,
    rabbit: f64,
}

impl Usage {
    fn now(pipeline: &Pipeline, postmaster: u32) -> Self {
        Self {
            api: service_cpu(Some(&pipeline.api)),
            relay: service_cpu(pipeline.relay.as_ref()),
            worker: service_cpu(pipeline.worker.as_ref()),
            postgres: process_tree_cpu(postmaster),
            rabbit: named_cpu("beam.smp"),
        }
    }

    /// µs per order between `self` and `later`.
    #[allow(clippy::cast_precision_loss)]
    fn per_order(self, later: Self, orders: i64) -> Self {
        let per = |before: f64, after: f64| 1e6 * (after - before) / (orders.max(1) as f64);
        Self {
            api: per(self.api, later.api),
            relay: per(self.relay, later.relay),
            worker: per(self.worker, later.worker),
            postgres: per(self.postgres, later.postgres),
            rabbit: per(self.rabbit, later.rabbit),
        }
    }
}

/// What one closed-loop step measured.
#[derive(Debug, Clone, Copy)]
struct Step {
    parts: Parts,
    rate: f64,
    failures: u64,
    stored: i64,
    /// Outbox rows the relay had not published when wrk stopped.
    unpublished: i64,
    /// CPU µs per stored order.
    cpu: Usage,
}

impl Step {
    fn text(&self) -> String {
        let mut cpu = vec![format!("API {:.0}", self.cpu.api)];
        if self.parts != Parts::Api {
            cpu.push(format!("relay {:.0}", self.cpu.relay));
        }
        if self.parts == Parts::ApiRelayWorker {
            cpu.push(format!("worker {:.0}", self.cpu.worker));
        }
        cpu.push(format!("PostgreSQL {:.0}", self.cpu.postgres));
        cpu.push(format!("RabbitMQ {:.0}", self.cpu.rabbit));
        let mut text = format!(
            "{}: {} orders/s; CPU µs per order: {}",
            self.parts.label(),
            thousands(self.rate),
            cpu.join(", ")
        );
        if self.failures > 0 {
            text.push_str(&format!("; {} failed", self.failures));
        }
        if self.unpublished > 0 {
            text.push_str(&format!(
                "; {} unpublished when wrk stopped",
                thousands(self.unpublished as f64)
            ));
        }
        text
    }

    fn json(&self) -> serde_json::Value {
        let running = |yes: bool, v: f64| yes.then(|| v.round());
        serde_json::json!({
            "step": self.parts.key(),
            "orders_per_s": self.rate.round(),
            "orders_stored": self.stored,
            "failures": self.failures,
            "unpublished_at_end": self.unpublished,
            "cpu_us_per_order": {
                "api": self.cpu.api.round(),
                "relay": running(self.parts != Parts::Api, self.cpu.relay),
                "worker": running(self.parts == Parts::ApiRelayWorker, self.cpu.worker),
                "postgresql": self.cpu.postgres.round(),
                "rabbitmq": self.cpu.rabbit.round(),
            },
        })
    }
}

/// What the open loop measured.
#[derive(Debug, Clone, Copy)]
struct Latency {
    target: f64,
    achieved: f64,
    failures: u64,
    events: i64,
    drained: bool,
    p50_ms: f64,
    p99_ms: f64,
}

/// `x` rounded, with thousands separators.
fn thousands(x: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let digits = (x.round() as i64).abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x.round() < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Polls until the outbox has no unpublished row, up to `timeout`; whether it
/// got there.
async fn drain(client: &tokio_postgres::Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if scalar(
            client,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One closed-loop step: wrk for `seconds` against the API of a fresh pipeline
/// (after `warmup` seconds of it when not zero). Returns the pipeline still
/// running, for the open loop.
async fn closed_loop(
    transport: &Transport,
    postmaster: u32,
    parts: Parts,
    seconds: u64,
    warmup: u64,
) -> (Step, Pipeline) {
    let pipeline = Pipeline::start(transport, parts).await;
    let url = format!("{}/orders", pipeline.api.base_url());
    if warmup > 0 {
        let (url, token) = (url.clone(), pipeline.token.clone());
        let _ =
            tokio::task::spawn_blocking(move || wrk(&url, CONNECTIONS, warmup, true, Some(&token)))
                .await
                .unwrap();
    }
    let client = connect(&pipeline.orders.url).await;
    let count = "SELECT count(*) FROM orders";
    let stored_before = scalar(&client, count).await;
    let before = Usage::now(&pipeline, postmaster);
    let token = pipeline.token.clone();
    let run =
        tokio::task::spawn_blocking(move || wrk(&url, CONNECTIONS, seconds, true, Some(&token)))
            .await
            .unwrap();
    let after = Usage::now(&pipeline, postmaster);
    let stored = scalar(&client, count).await - stored_before;
    let unpublished = if parts == Parts::Api {
        0
    } else {
        scalar(
            &client,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
    };
    let step = Step {
        parts,
        rate: run.rate,
        failures: run.failures,
        stored,
        unpublished,
        cpu: before.per_order(after, stored),
    };
    (step, pipeline)
}

/// The open loop on a running pipeline: orders at `rate` for `duration`, then
/// the commit→publish latency of their outbox rows once published.
async fn open_loop_latency(pipeline: &Pipeline, rate: f64, duration: Duration) -> Latency {
    let client = connect(&pipeline.orders.url).await;
    // The closed loop's backlog would otherwise delay these events.
    let _ = drain(&client, Duration::from_secs(15)).await;
    let mark = scalar(&client, "SELECT coalesce(max(id), 0) FROM outbox").await;
    let started = Instant::now();
    let report = open_loop(
        &pipeline.api.base_url(),
        &pipeline.token,
        rate,
        duration,
        OPEN_LOOP_CONNECTIONS,
    )
    .await
    .unwrap();
    let elapsed = started.elapsed().min(duration);
    let drained = drain(&client, Duration::from_secs(15)).await;
    let row = client
        .query_one(
            "SELECT count(*),
                    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency), 0),
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency), 0)
             FROM (SELECT extract(epoch FROM published_at - created_at)::float8 AS latency
                   FROM outbox WHERE id > $1 AND published_at IS NOT NULL) l",
            &[&mark],
        )
        .await
        .unwrap();
    let ms = |seconds: f64| (seconds.max(0.0) * 1e5).round() / 100.0;
    Latency {
        target: rate,
        achieved: crate::rate(report.latencies.len(), elapsed),
        failures: report.failures,
        events: row.get(0),
        drained,
        p50_ms: ms(row.get(1)),
        p99_ms: ms(row.get(2)),
    }
}

/// Everything measured on one transport: its rows and its JSON.
async fn measure(
    transport: &Transport,
    scale: Scale,
    server: &[(String, String)],
) -> (Vec<Row>, serde_json::Value) {
    let seconds: u64 = scale.pick(15, 3);
    let warmup: u64 = scale.pick(2, 0);
    let (rate, open_seconds) = scale.pick((1000.0, 10), (200.0, 2));
    let label = transport.label();
    let postmaster = transport.postmaster().await;

    let mut steps = Vec::new();
    let mut latency = None;
    for parts in [Parts::Api, Parts::ApiRelay, Parts::ApiRelayWorker] {
        eprintln!("bench: live, {label}, {} …", parts.label());
        let (step, pipeline) = closed_loop(transport, postmaster, parts, seconds, warmup).await;
        steps.push(step);
        if parts == Parts::ApiRelayWorker {
            eprintln!("bench: live, {label}, open loop at {rate:.0}/s …");
            latency =
                Some(open_loop_latency(&pipeline, rate, Duration::from_secs(open_seconds)).await);
        }
        pipeline.stop().await;
    }
    let latency = latency.unwrap();
    let (alone, relay, all) = (steps[0], steps[1], steps[2]);

    let mut rows: Vec<Row> = steps
        .iter()
        .map(|step| {
            let compared = step.parts != Parts::Api;
            Row::new(
                format!(
                    "{label}: closed loop, wrk {CONNECTIONS} connections, {seconds} s, fresh databases"
                ),
                step.text(),
                if compared {
                    format!("api alone: {} orders/s", thousands(alone.rate))
                } else {
                    String::new()
                },
                if compared {
                    format!("{:.2}×", step.rate / alone.rate.max(1.0))
                } else {
                    String::new()
                },
                "",
            )
        })
        .collect();
    let added = relay.cpu.postgres - alone.cpu.postgres;
    rows.push(Row::new(
        format!("{label}: PostgreSQL CPU the relay adds per event"),
        format!("{added:.0} µs"),
        format!(
            "PostgreSQL µs per order: api alone {:.0}, api + relay {:.0}",
            alone.cpu.postgres, relay.cpu.postgres
        ),
        "",
        verdict("≤ 60 µs", added <= 60.0),
    ));
    let ratio = all.rate / alone.rate.max(1.0);
    rows.push(Row::new(
        format!("{label}: pipeline rate against API alone"),
        format!("api + relay + worker: {} orders/s", thousands(all.rate)),
        format!("api alone: {} orders/s", thousands(alone.rate)),
        format!("{ratio:.2}×"),
        verdict("≥ 0.80×", ratio >= 0.80),
    ));
    rows.push(Row::new(
        format!(
            "{label}: commit→publish, open loop {} orders/s for {open_seconds} s (API + relay + worker)",
            thousands(rate)
        ),
        format!(
            "p50 {:.2} / p99 {:.2} ms over {} events; {} orders/s answered{}{}",
            latency.p50_ms,
            latency.p99_ms,
            thousands(latency.events as f64),
            thousands(latency.achieved),
            if latency.failures > 0 {
                format!(" ({} failed)", latency.failures)
            } else {
                String::new()
            },
            if latency.drained {
                ""
            } else {
                "; NOT DRAINED in 15 s"
            }
        ),
        "",
        "",
        verdict("p99 ≤ 10 ms", latency.drained && latency.p99_ms <= 10.0),
    ));

    let json = serde_json::json!({
        "label": label,
        "server_settings": server
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "closed_loop": {
            "seconds": seconds,
            "warmup_seconds": warmup,
            "connections": CONNECTIONS,
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
        },
        "postgresql_us_added_by_relay_per_event": added.round(),
        "postgresql_us_added_by_relay_met": added <= 60.0,
        "pipeline_rate_against_api_alone": (ratio * 1000.0).round() / 1000.0,
        "pipeline_rate_against_api_alone_met": ratio >= 0.80,
        "commit_to_publish": {
            "target_per_s": latency.target,
            "seconds": open_seconds,
            "connections": OPEN_LOOP_CONNECTIONS,
            "achieved_per_s": latency.achieved.round(),
            "failures": latency.failures,
            "events": latency.events,
            "drained": latency.drained,
            "p50_ms": latency.p50_ms,
            "p99_ms": latency.p99_ms,
            "p99_met": latency.drained && latency.p99_ms <= 10.0,
        },
    });
    (rows, json)
}

/// Runs the live benchmark: plain TCP first, then TLS.
pub async fn run(scale: Scale) -> Section {
    let local = connect(&format!("{}/postgres", devkit::db::server_url())).await;
    let plain_settings = settings(&local).await;
    drop(local);

    let mut rows = Vec::new();
    let mut transports = serde_json::Map::new();
    let plain = Transport::Plain;
    let (plain_rows, plain_json) = measure(&plain, scale, &plain_settings).await;
    rows.extend(plain_rows);
    transports.insert(plain.key().to_owned(), plain_json);

    eprintln!("bench: live, starting the TLS server …");
    let copied = plain_settings.clone();
    let pg = tokio::task::spawn_blocking(move || {
        let pairs: Vec<(&str, &str)> = copied
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        TlsPostgres::start_with(&pairs)
    })
    .await
    .unwrap()
    .unwrap();
    // Read back rather than assumed: what the comparison ran with.
    let tls_settings = settings(&connect(&verified_url(&pg, "postgres")).await).await;
    let tls = Transport::Tls(pg);
    let (tls_rows, tls_json) = measure(&tls, scale, &tls_settings).await;
    rows.extend(tls_rows);
    transports.insert(tls.key().to_owned(), tls_json);
    // Stops the TLS server and deletes its directory, databases and all, on a
    // blocking thread (it waits for the server's shutdown).
    let _ = tokio::task::spawn_blocking(move || drop(tls)).await;

    let (rate, open_seconds) = scale.pick((1000.0, 10), (200.0, 2));
    Section {
        name: "live",
        rows,
        json: serde_json::json!({
            "closed_loop_seconds": scale.pick(15, 3),
            "wrk_threads": 2,
            "wrk_connections": CONNECTIONS,
            "open_loop_per_s": rate,
            "open_loop_seconds": open_seconds,
            "transports": transports,
        }),
    }
}
