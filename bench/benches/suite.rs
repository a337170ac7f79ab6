//! The benchmark suite: `cargo bench -p bench` (about 10 minutes) or
//! `cargo bench -p bench -- --quick` (under 2, only to prove it works).
//! `--only api,auth,relay,worker,e2e,hostile,live` runs some parts. Prints one table and writes
//! the JSON summary to `target/bench/summary.json`.
//!
//! Needs the local PostgreSQL and RabbitMQ, `pgbench` and `wrk`.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::time::Instant;

use bench::{Scale, Section, table};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scale = Scale {
        quick: args.iter().any(|a| a == "--quick"),
    };
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    // Spans on, as in the service binaries (the relay and worker parts run in
    // this process; the cost of tracing is measured too).
    let _telemetry = plumbing::telemetry::init("bench");
    devkit::process::build_services().unwrap();

    let started = Instant::now();
    let mut sections: Vec<Section> = Vec::new();
    if wanted("api") {
        eprintln!("bench: api …");
        sections.push(bench::api::run(scale).await);
    }
    if wanted("auth") {
        eprintln!("bench: authentication …");
        sections.push(bench::auth::run(scale).await);
    }
    if wanted("relay") {
        eprintln!("bench: relay …");
        sections.push(bench::relay::run(scale).await);
    }
    if wanted("worker") {
        eprintln!("bench: worker …");
        sections.push(bench::worker::run(scale).await);
    }
    if wanted("e2e") {
        eprintln!("bench: end to end …");
        sections.push(bench::e2e::run(scale).await);
    }
    if wanted("hostile") {
        eprintln!("bench: hostile clients …");
        sections.push(bench::hostile::run(scale).await);
    }
    if wanted("live") {
        eprintln!("bench: live …");
        sections.push(bench::live::run(scale).await);
    }
    let elapsed = started.elapsed();

    println!("\n{}", table(&sections));
    let summary = serde_json::json!({
        "quick": scale.quick,
        "seconds": elapsed.as_secs(),
        "cores": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "parts": sections
            .iter()
            .map(|s| (s.name.to_owned(), s.json.clone()))
            .collect::<serde_json::Map<_, _>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    println!("{}", serde_json::to_string(&summary).unwrap());
    eprintln!(
        "bench: done in {:.0} s; summary in target/bench/summary.json",
        elapsed.as_secs_f64()
    );
}
