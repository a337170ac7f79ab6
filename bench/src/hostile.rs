//! Hostile clients (`--only hostile`): the API under 5,000 connections that send
//! half a request head and stop plus 5,000 kept idle after a `GET /health`,
//! while a normal client (`POST /orders` on a keep-alive connection, `GET
//! /health` on a new one, every 10 ms) is measured; and how soon after its
//! timeout each attacking connection was closed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use devkit::{
    auth::{Issuer, TEST_CUSTOMER},
    db::TestDatabase,
    hostile,
    process::Service,
};
use plumbing::db::Database;

use crate::{Row, Scale, Section, ms, percentile, verdict};

/// Runs the hostile-clients benchmark.
pub async fn run(scale: Scale) -> Section {
    let each: usize = scale.pick(5_000, 50);
    // Shorter than the defaults (10 s, 75 s) so that the run takes seconds;
    // what is measured is how late after them connections close.
    let (header, idle) = scale.pick(
        (Duration::from_secs(5), Duration::from_secs(10)),
        (Duration::from_secs(1), Duration::from_secs(2)),
    );
    let db = TestDatabase::migrated("bench_hostile", Database::Orders).await;
    let issuer = Issuer::new();
    let mut env = issuer.env();
    env.extend([
        ("DATABASE_URL", db.url.clone()),
        ("PORT", "0".into()),
        ("MIGRATE_ON_START", "false".into()),
        ("HTTP_HEADER_READ_TIMEOUT", format!("{}s", header.as_secs())),
        ("HTTP_IDLE_TIMEOUT", format!("{}s", idle.as_secs())),
        // The attack alone reaches the default cap (10,000): room for the
        // normal client, whose new connections would otherwise wait for an
        // attacker's timeout. The cap has its own test.
        ("HTTP_MAX_CONNECTIONS", (2 * each + 1_000).to_string()),
    ]);
    let api = Service::spawn("orders-api", &env, false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(hostile::normal_client(
        api.base_url(),
        issuer.long_lived_token(TEST_CUSTOMER),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let wait = Duration::from_secs(5);
    let mut slow = Vec::with_capacity(each);
    let mut idles = Vec::with_capacity(each);
    for i in 0..each {
        slow.push(tokio::spawn(hostile::slow_header(api.addr, header + wait)));
        idles.push(tokio::spawn(hostile::idle_keep_alive(
            api.addr,
            idle + wait,
        )));
        // Connects in waves, so that the listen backlog does not overflow (its
        // dropped handshakes would be retried a second later, and measured).
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (mut slow_late, mut idle_late) = (Vec::new(), Vec::new());
    let (mut slow_early, mut idle_early, mut failed, mut open) = (0, 0, 0, 0);
    for task in slow {
        match task.await.unwrap() {
            Ok(Some(c)) => {
                slow_early += usize::from(c.from_connecting < header);
                slow_late.push(c.from_connected.saturating_sub(header));
            }
            Ok(None) => open += 1,
            Err(_) => failed += 1,
        }
    }
    for task in idles {
        match task.await.unwrap() {
            Ok(Some(c)) => {
                idle_early += usize::from(c.from_request < idle);
                idle_late.push(c.from_answer.saturating_sub(idle));
            }
            Ok(None) => open += 1,
            Err(_) => failed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut normal = normal.await.unwrap();
    drop(api);

    let p99 = percentile(&mut normal.latencies, 99.0);
    let max = normal.latencies.last().copied().unwrap_or_default();
    let slow_max = slow_late.iter().max().copied().unwrap_or_default();
    let idle_max = idle_late.iter().max().copied().unwrap_or_default();
    let slow_p99 = percentile(&mut slow_late, 99.0);
    let idle_p99 = percentile(&mut idle_late, 99.0);
    let all_closed = open == 0 && failed == 0 && slow_early == 0 && idle_early == 0;
    let rows = vec![
        Row::new(
            format!(
                "normal client under {each} slow-header + {each} idle connections ({} requests)",
                normal.latencies.len()
            ),
            format!(
                "p99 {:.2} ms, max {:.2} ms, {} failed",
                ms(p99),
                ms(max),
                normal.failures.len()
            ),
            "",
            "",
            verdict(
                "p99 < 100 ms, none failed",
                p99 < Duration::from_millis(100) && normal.failures.is_empty(),
            ),
        ),
        Row::new(
            format!("attackers closed after their timeout (header {header:?}, idle {idle:?})"),
            format!(
                "slow-header late by p99 {:.0} / max {:.0} ms; idle late by p99 {:.0} / max {:.0} ms",
                ms(slow_p99),
                ms(slow_max),
                ms(idle_p99),
                ms(idle_max)
            ),
            "",
            format!("{slow_early} + {idle_early} closed early, {open} never, {failed} failed"),
            verdict("every one closed, none early", all_closed),
        ),
    ];
    Section {
        name: "hostile",
        rows,
        json: serde_json::json!({
            "connections_each": each,
            "header_read_timeout_s": header.as_secs(),
            "idle_timeout_s": idle.as_secs(),
            "normal_requests": normal.latencies.len(),
            "normal_failures": normal.failures.len(),
            "normal_p99_ms": ms(p99),
            "normal_max_ms": ms(max),
            "slow_header_late_p99_ms": ms(slow_p99),
            "slow_header_late_max_ms": ms(slow_max),
            "idle_late_p99_ms": ms(idle_p99),
            "idle_late_max_ms": ms(idle_max),
            "closed_early": slow_early + idle_early,
            "never_closed": open,
            "failed": failed,
        }),
    }
}
