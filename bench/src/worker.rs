//! Worker benchmark: drain rate of a queue of `OrderCreated` events, beside pgbench
//! running the same per-message SQL on the same database and the worker handling
//! one message per transaction, all in the same run.
//!
//! `cargo run --release -p bench --bin worker -- [--events 100000] [--single 20000] [--pgbench-seconds 10]`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use bench::{arg, rate};
use devkit::{broker::TestBroker, db::TestDatabase};
use invoices_worker::worker::{Worker, WorkerSettings};
use plumbing::db::Database;
use tokio_util::sync::CancellationToken;

/// The SQL the worker runs for one message, as a pgbench script.
const PER_MESSAGE_SQL: &str = "WITH seen AS (
    INSERT INTO processed_messages (message_id) VALUES (gen_random_uuid())
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id)
INSERT INTO invoices (id, order_id, message_id, amount_cents, currency, order_created_at)
SELECT gen_random_uuid(), gen_random_uuid(), seen.message_id, 2999, 'BRL', now() FROM seen
ON CONFLICT (order_id) DO NOTHING;
";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Spans on, as in the service binaries (the cost of tracing is measured too).
    let _telemetry = plumbing::telemetry::init("bench");
    let events: usize = arg("--events", 100_000);
    let single: usize = arg("--single", 20_000);
    let pgbench_seconds: u64 = arg("--pgbench-seconds", 10);
    let settings = WorkerSettings::default();

    let broker = TestBroker::new();
    broker.declare().await;

    // 1. pgbench: the per-message SQL, one message per transaction, 4 clients.
    let db = TestDatabase::migrated("bench_pgbench", Database::Invoices).await;
    let pgbench = pgbench(&db, pgbench_seconds);
    drop(db);

    // 2. The worker draining a queue of `events` messages, batched.
    let batched = drain(&broker, events, settings).await;

    // 3. The same worker handling one message per transaction.
    let one = drain(
        &broker,
        single,
        WorkerSettings {
            batch_size: 1,
            ..settings
        },
    )
    .await;

    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| pgbench, per-message SQL, 4 clients, {pgbench_seconds} s | {pgbench:.0} msg/s |");
    println!(
        "| worker drain of {events} messages (batch {}, prefetch {}) | {batched:.0} msg/s |",
        settings.batch_size, settings.prefetch
    );
    println!("| worker, one message per transaction ({single} messages) | {one:.0} msg/s |");
    println!(
        "| ratio worker / pgbench | {:.1} % |",
        100.0 * batched / pgbench
    );
    println!(
        "| ratio worker / one-per-transaction | {:.1}× |",
        batched / one
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "worker",
            "events": events,
            "pgbench_per_s": pgbench.round(),
            "worker_drain_per_s": batched.round(),
            "one_per_transaction_per_s": one.round(),
            "ratio_pgbench": (batched / pgbench * 1000.0).round() / 1000.0,
            "ratio_one_per_transaction": (batched / one * 100.0).round() / 100.0,
        })
    );
}

/// Runs pgbench with the per-message SQL; returns transactions (messages) per second.
fn pgbench(db: &TestDatabase, seconds: u64) -> f64 {
    let script = std::env::temp_dir().join(format!("invoice-{}.sql", db.name));
    std::fs::write(&script, PER_MESSAGE_SQL).unwrap();
    let output = Command::new("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(&db.url)
        .output()
        .expect("pgbench is not installed (Debian: postgresql-client)");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

/// Queues `n` valid events, then times a worker (fresh database) draining them.
async fn drain(broker: &TestBroker, n: usize, settings: WorkerSettings) -> f64 {
    let db = TestDatabase::migrated("bench_worker", Database::Invoices).await;
    queue_events(broker, n).await;
    let worker = Worker::new(
        db.pool(),
        broker.url.clone(),
        broker.topology.clone(),
        settings,
    );
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    while metrics.invoiced.get() < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(db.count("invoices").await as usize, n);
    rate(n, elapsed)
}

/// Publishes `n` distinct `OrderCreated` events to the queue, 500 unconfirmed at most.
async fn queue_events(broker: &TestBroker, n: usize) {
    bench::publish_confirmed(broker, n, 500, || {
        let id = uuid::Uuid::now_v7().to_string();
        (
            devkit::messages::body(&devkit::messages::order_created(2999)),
            devkit::messages::properties(&id),
        )
    })
    .await;
}
