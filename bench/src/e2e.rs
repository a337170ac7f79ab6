//! End to end: the three release binaries on the local servers, open-loop load at
//! fixed rates; POST latency at the client, POST→invoice latency from the
//! databases' timestamps (the order's `created_at`, written by the API, against
//! the invoice's, the worker's insert), the backlog while it runs, the highest
//! rate the pipeline sustains, and each process's peak memory.

use std::time::{Duration, Instant};

use devkit::{
    auth::{Issuer, TEST_CUSTOMER},
    broker::TestBroker,
    db::TestDatabase,
    process::Service,
};
use plumbing::db::Database;
use time::OffsetDateTime;

use crate::{Row, Scale, Section, load::open_loop, ms, percentile, verdict};

/// The load generator's keep-alive connections to the API.
const CONNECTIONS: usize = 64;

/// What one fixed-rate step measured.
#[derive(Debug, Clone)]
struct Step {
    target: f64,
    achieved: f64,
    failures: u64,
    post_p50: Duration,
    post_p99: Duration,
    invoice_p50: Duration,
    invoice_p99: Duration,
    /// Most unpublished outbox rows and most queued messages seen.
    max_backlog: (i64, i64),
    /// The same when the load stopped.
    end_backlog: (i64, i64),
    drained: bool,
}

impl Step {
    /// Every order sent on schedule and answered (an API that answers 5 % short of
    /// the rate has a queue growing at the client: 1,445 of 1,500/s meant POST p50
    /// 275 ms after 10 s), the backlog at most a second's worth when the load
    /// stopped, and every invoice there within seconds of it.
    fn sustained(&self) -> bool {
        self.achieved >= 0.99 * self.target
            && self.failures == 0
            && self.drained
            && (self.end_backlog.0 + self.end_backlog.1) as f64 <= self.target
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "target_per_s": self.target,
            "achieved_per_s": self.achieved.round(),
            "failures": self.failures,
            "post_p50_ms": ms(self.post_p50),
            "post_p99_ms": ms(self.post_p99),
            "post_to_invoice_p50_ms": ms(self.invoice_p50),
            "post_to_invoice_p99_ms": ms(self.invoice_p99),
            "max_unpublished": self.max_backlog.0,
            "max_queued": self.max_backlog.1,
            "unpublished_at_end": self.end_backlog.0,
            "queued_at_end": self.end_backlog.1,
            "sustained": self.sustained(),
        })
    }
}

/// The running pipeline.
struct Pipeline {
    orders: TestDatabase,
    invoices: TestDatabase,
    broker: TestBroker,
    /// The issuer of the API's tokens, and the one the load sends.
    _issuer: Issuer,
    token: String,
    services: Vec<Service>,
}

impl Pipeline {
    async fn start() -> Self {
        let (orders, invoices) = tokio::join!(
            TestDatabase::migrated("bench_e2e_orders", Database::Orders),
            TestDatabase::migrated("bench_e2e_invoices", Database::Invoices),
        );
        let broker = TestBroker::new();
        broker.declare().await;
        let common = [
            ("PORT", "0".to_owned()),
            ("MIGRATE_ON_START", "false".to_owned()),
            ("BROKER_URL", broker.url.clone()),
            ("BROKER_NAMESPACE", broker.namespace.clone()),
        ];
        let with = |url: &str| {
            let mut env = common.to_vec();
            env.push(("DATABASE_URL", url.to_owned()));
            env
        };
        let (relay_env, worker_env) = (with(&orders.url), with(&invoices.url));
        // Authentication on, as shipped.
        let issuer = Issuer::new();
        let mut api_env = relay_env.clone();
        api_env.extend(issuer.env());
        let (api, relay, worker) = tokio::join!(
            Service::spawn("orders-api", &api_env, false),
            Service::spawn("outbox-relay", &relay_env, false),
            Service::spawn("invoices-worker", &worker_env, false),
        );
        Self {
            orders,
            invoices,
            broker,
            token: issuer.long_lived_token(TEST_CUSTOMER),
            _issuer: issuer,
            services: vec![api, relay, worker],
        }
    }

    /// Outbox rows not yet published, and messages waiting in the queue.
    async fn backlog(&self) -> (i64, i64) {
        let unpublished = self.orders.unpublished().await;
        let queued = self
            .broker
            .ready_count(&self.broker.topology.order_created_queue)
            .await;
        (unpublished, i64::from(queued))
    }

    /// Waits (up to a minute) until an earlier step's backlog is gone.
    async fn wait_for_empty_backlog(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.backlog().await != (0, 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn step(&self, rate: f64, seconds: u64) -> Step {
        self.wait_for_empty_backlog().await;
        let invoices = self.invoices.client().await;
        let from = OffsetDateTime::now_utc();
        let started = Instant::now();
        let (api, token) = (self.services[0].base_url(), self.token.clone());
        let load = tokio::spawn(async move {
            open_loop(
                &api,
                &token,
                rate,
                Duration::from_secs(seconds),
                CONNECTIONS,
            )
            .await
        });
        let mut max_backlog = (0, 0);
        while !load.is_finished() {
            let (unpublished, queued) = self.backlog().await;
            max_backlog = (max_backlog.0.max(unpublished), max_backlog.1.max(queued));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let end_backlog = self.backlog().await;
        let mut report = load.await.unwrap().unwrap();
        let elapsed = started.elapsed().min(Duration::from_secs(seconds));
        let to = OffsetDateTime::now_utc();
        let created = i64::try_from(report.created).unwrap();
        let window = "order_created_at >= $1 AND order_created_at < $2";
        let deadline = Instant::now() + Duration::from_secs(15);
        let drained = loop {
            let invoiced: i64 = invoices
                .query_one(
                    &format!("SELECT count(*) FROM invoices WHERE {window}"),
                    &[&from, &to],
                )
                .await
                .unwrap()
                .get(0);
            if invoiced >= created {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let row = invoices
            .query_one(
                &format!(
                    "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency), 0),
                            coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency), 0)
                     FROM (SELECT extract(epoch FROM created_at - order_created_at)::float8 AS latency
                           FROM invoices WHERE {window}) l"
                ),
                &[&from, &to],
            )
            .await
            .unwrap();
        let seconds_of = |s: f64| Duration::from_secs_f64(s.max(0.0));
        Step {
            target: rate,
            achieved: crate::rate(report.latencies.len(), elapsed),
            failures: report.failures,
            post_p50: percentile(&mut report.latencies, 50.0),
            post_p99: percentile(&mut report.latencies, 99.0),
            invoice_p50: seconds_of(row.get(0)),
            invoice_p99: seconds_of(row.get(1)),
            max_backlog,
            end_backlog,
            drained,
        }
    }

    /// Peak resident memory (VmHWM) of each process, MiB.
    fn peak_rss(&self) -> Vec<(String, f64)> {
        self.services
            .iter()
            .map(|s| {
                let status = s
                    .pid()
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                    .unwrap_or_default();
                let kib: f64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default();
                (s.name.clone(), kib / 1024.0)
            })
            .collect()
    }
}

fn row(step: &Step, seconds: u64, target: String) -> Row {
    Row::new(
        format!("open loop, {:.0} orders/s for {seconds} s", step.target),
        format!(
            "{:.0}/s answered{}; POST p50 {:.2} / p99 {:.2} ms; POST→invoice p50 {:.2} / p99 {:.2} ms; most unpublished / queued {} / {}, at the end {} / {}{}",
            step.achieved,
            if step.failures > 0 {
                format!(" ({} failed)", step.failures)
            } else {
                String::new()
            },
            ms(step.post_p50),
            ms(step.post_p99),
            ms(step.invoice_p50),
            ms(step.invoice_p99),
            step.max_backlog.0,
            step.max_backlog.1,
            step.end_backlog.0,
            step.end_backlog.1,
            if step.drained { "" } else { "; NOT DRAINED" }
        ),
        "",
        if step.sustained() {
            "sustained"
        } else {
            "not sustained"
        },
        target,
    )
}

/// Runs the end-to-end benchmark.
pub async fn run(scale: Scale) -> Section {
    let seconds: u64 = scale.pick(10, 3);
    let pipeline = Pipeline::start().await;
    // Warm-up.
    let _ = pipeline.step(100.0, 1).await;

    let mut rows = Vec::new();
    let mut steps = Vec::new();
    for rate in scale.pick(vec![200.0, 1000.0], vec![200.0]) {
        let step = pipeline.step(rate, seconds).await;
        let target = if (rate - 1000.0).abs() < f64::EPSILON {
            verdict(
                "POST→invoice p50 ≤ 10 ms, p99 ≤ 50 ms",
                step.sustained()
                    && step.invoice_p50 <= Duration::from_millis(10)
                    && step.invoice_p99 <= Duration::from_millis(50),
            )
        } else {
            String::new()
        };
        rows.push(row(&step, seconds, target));
        steps.push(step);
    }
    // The highest sustained rate: up in steps of 1.5× until the pipeline falls
    // behind (or the load generator cannot keep up, which shows as not sustained).
    let mut highest = steps
        .iter()
        .filter(|s| s.sustained())
        .map(|s| s.target)
        .fold(0.0, f64::max);
    if !scale.quick {
        let mut rate: f64 = 1500.0;
        loop {
            let step = pipeline.step(rate, seconds).await;
            let sustained = step.sustained();
            rows.push(row(&step, seconds, String::new()));
            steps.push(step);
            if !sustained {
                break;
            }
            highest = highest.max(rate);
            rate = (rate * 1.5).round();
        }
        // One more step halfway between the last sustained rate and the first not.
        if highest > 0.0 && rate > highest {
            let between = ((highest + rate) / 2.0).round();
            let step = pipeline.step(between, seconds).await;
            if step.sustained() {
                highest = between;
            }
            rows.push(row(&step, seconds, String::new()));
            steps.push(step);
        }
    }
    rows.push(Row::new(
        "highest sustained rate",
        format!("{highest:.0} orders/s"),
        "",
        "",
        "",
    ));
    let rss = pipeline.peak_rss();
    let all_small = rss.iter().all(|(_, mib)| *mib < 50.0);
    rows.push(Row::new(
        "peak RSS over the whole run",
        rss.iter()
            .map(|(name, mib)| format!("{name} {mib:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", "),
        "",
        "",
        verdict("each < 50 MiB", all_small),
    ));
    Section {
        name: "end-to-end",
        rows,
        json: serde_json::json!({
            "seconds_per_step": seconds,
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "highest_sustained_per_s": highest,
            "peak_rss_mib": rss.iter().map(|(n, m)| (n.clone(), serde_json::json!((m * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
        }),
    }
}
