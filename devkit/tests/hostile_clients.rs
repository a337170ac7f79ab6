//! Hostile HTTP clients against the real orders-api process: connections that
//! send half a request head and stop, connections kept idle after a request, and
//! more connections than the server takes. The server closes each attacking
//! connection when its timeout passes (not before), keeps answering a normal
//! client quickly meanwhile, and never holds more connections than its cap.
//! (The relay and the worker serve HTTP through the same `plumbing::http::serve`.)

#![allow(clippy::unwrap_used)]

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
    raw_http::RawConnection,
    sample,
};
use tokio::time::Instant;

/// Connections of each kind in the attack (small enough for CI; the benchmark
/// runs 5,000 of each).
const ATTACKERS: usize = 400;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How late past its timeout a connection may be seen closed: the server's
/// timer, closing 400 sockets at once, and this process noticing, on two cores.
const SLACK: Duration = Duration::from_millis(250);
/// The normal client's bound.
const P99: Duration = Duration::from_millis(100);
/// How long past its timeout an attacker waits to see its connection closed
/// (longer than the slack, so that a late close is measured, not only missed).
const WAIT: Duration = Duration::from_secs(1);

/// The API on a fresh database with `env` on top, and the issuer of its tokens.
async fn api(label: &str, env: &[(&str, &str)]) -> (Service, TestDatabase, Issuer) {
    let db = TestDatabase::reserve(label);
    let issuer = Issuer::new();
    let mut all = vec![("DATABASE_URL", db.url.clone()), ("PORT", "0".to_owned())];
    all.extend(issuer.env());
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    (Service::spawn("orders-api", &all, false).await, db, issuer)
}

/// The `/metrics` scrape through `connection`.
async fn scrape(connection: &mut RawConnection) -> String {
    let res = connection.get("/metrics").await.unwrap();
    assert_eq!(res.status, 200);
    res.body
}

/// This process's soft limit on open files.
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_connections(scrape: &str) -> Option<f64> {
    sample(scrape, "http_server_open_connections")
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_on_time_while_a_normal_client_is_served() {
    let header = format!("{}ms", HEADER_READ_TIMEOUT.as_millis());
    let idle = format!("{}ms", IDLE_TIMEOUT.as_millis());
    let (api, _db, issuer) = api(
        "hostile",
        &[
            ("HTTP_HEADER_READ_TIMEOUT", &header),
            ("HTTP_IDLE_TIMEOUT", &idle),
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(hostile::normal_client(
        api.base_url(),
        issuer.token(TEST_CUSTOMER),
        stop.clone(),
    ));
    // The normal client's first requests (connections, database sessions) before
    // the attack, so that the attack is what its latencies measure.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let slow: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(hostile::slow_header(api.addr, HEADER_READ_TIMEOUT + WAIT)))
        .collect();
    let idle: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(hostile::idle_keep_alive(api.addr, IDLE_TIMEOUT + WAIT)))
        .collect();
    let mut slow_closes = Vec::new();
    for task in slow {
        let closed = task
            .await
            .unwrap()
            .expect("a slow-header connection failed");
        slow_closes.push(closed.expect("a slow-header connection was never closed"));
    }
    let mut idle_closes = Vec::new();
    for task in idle {
        let closed = task.await.unwrap().expect("an idle connection failed");
        idle_closes.push(closed.expect("an idle connection was never closed"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut normal = normal.await.unwrap();

    // Every attacking connection was held until its timeout and closed right after.
    let earliest = slow_closes.iter().map(|c| c.from_connecting).min().unwrap();
    let latest = slow_closes.iter().map(|c| c.from_connected).max().unwrap();
    assert!(
        earliest >= HEADER_READ_TIMEOUT && latest <= HEADER_READ_TIMEOUT + SLACK,
        "slow-header connections closed {earliest:?} after connecting at the earliest and \
         {latest:?} after connected at the latest, not within {HEADER_READ_TIMEOUT:?} + {SLACK:?}"
    );
    let earliest = idle_closes.iter().map(|c| c.from_request).min().unwrap();
    let latest = idle_closes.iter().map(|c| c.from_answer).max().unwrap();
    assert!(
        earliest >= IDLE_TIMEOUT && latest <= IDLE_TIMEOUT + SLACK,
        "idle connections closed {earliest:?} after their request at the earliest and \
         {latest:?} after their answer at the latest, not within {IDLE_TIMEOUT:?} + {SLACK:?}"
    );

    // The normal client was answered throughout, quickly.
    assert!(normal.failures.is_empty(), "{:?}", normal.failures);
    assert!(normal.latencies.len() >= 100, "{}", normal.latencies.len());
    normal.latencies.sort_unstable();
    let p99 = normal.latencies[normal.latencies.len() * 99 / 100];
    assert!(
        p99 < P99,
        "the normal client's p99 was {p99:?} over {} requests (max {:?})",
        normal.latencies.len(),
        normal.latencies.last().unwrap()
    );

    // Operators see it: each close counted by its reason, and only the
    // observer's connection left open.
    let mut observer = RawConnection::open(api.addr).await.unwrap();
    #[allow(clippy::cast_precision_loss)]
    let attackers = ATTACKERS as f64;
    let closed = |metrics: &str, reason: &str| {
        sample(
            metrics,
            &format!(r#"http_server_connections_closed_total{{reason="{reason}"}}"#),
        )
    };
    // A close is counted just after the socket is dropped, so a client can see
    // it before the count; and the normal client's last connections may take a
    // moment to be seen closed.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let metrics = scrape(&mut observer).await;
        if closed(&metrics, "header_timeout") == Some(attackers)
            && closed(&metrics, "idle_timeout") == Some(attackers)
            && open_connections(&metrics) == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {attackers} closes for each timeout and 1 open connection:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_server_holds_no_more_connections_than_its_cap() {
    const CAP: usize = 8;
    let (api, _db, _issuer) = api(
        "connection_cap",
        &[
            ("HTTP_MAX_CONNECTIONS", &CAP.to_string()),
            // Nothing here may time out.
            ("HTTP_HEADER_READ_TIMEOUT", "60s"),
            ("HTTP_IDLE_TIMEOUT", "60s"),
        ],
    )
    .await;
    #[allow(clippy::cast_precision_loss)]
    let cap = CAP as f64;

    // The cap reached: an observer and CAP - 1 idle keep-alive connections.
    let mut observer = RawConnection::open(api.addr).await.unwrap();
    let mut held = Vec::new();
    for _ in 1..CAP {
        let mut connection = RawConnection::open(api.addr).await.unwrap();
        assert_eq!(connection.get("/health").await.unwrap().status, 200);
        held.push(connection);
    }
    let metrics = scrape(&mut observer).await;
    assert_eq!(open_connections(&metrics), Some(cap), "{metrics}");
    assert_eq!(
        sample(&metrics, "http_server_max_connections"),
        Some(cap),
        "{metrics}"
    );

    // One more: the kernel completes its handshake (the listen backlog), the
    // server does not take it.
    let mut extra = RawConnection::open(api.addr).await.unwrap();
    extra
        .send(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), extra.response()).await;
    assert!(
        early.is_err(),
        "connection {} was answered while {CAP} were held: {early:?}",
        CAP + 1
    );
    assert_eq!(open_connections(&scrape(&mut observer).await), Some(cap));

    // One held connection closes: the waiting one is taken and answered at once.
    drop(held.pop());
    let freed = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(2), extra.response())
        .await
        .expect("the waiting connection was not answered after a slot freed")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        freed.elapsed() < Duration::from_millis(100),
        "answered {:?} after a slot freed",
        freed.elapsed()
    );
    assert_eq!(open_connections(&scrape(&mut observer).await), Some(cap));

    // A burst past the cap: the backlog holds every handshake. Past a full
    // backlog the kernel drops SYNs, and a client waits 1 s for its
    // retransmission (the standard library's backlog of 128 did that to the
    // normal client of the test above, in a burst of 800). 600 is well past 128.
    const BURST: usize = 600;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("net.core.somaxconn")
        .trim()
        .parse()
        .unwrap();
    assert!(
        somaxconn > BURST,
        "the kernel caps every listen backlog at net.core.somaxconn = {somaxconn}: \
         raise it above {BURST} (sysctl -w net.core.somaxconn=4096)"
    );
    // This test's burst and the other test's 800 attackers may overlap.
    let open_files = open_files_limit();
    assert!(
        open_files > 2 * (BURST + 2 * ATTACKERS),
        "the burst needs file descriptors: the open-files limit is {open_files} \
         (ulimit -n 20000)"
    );
    let started = Instant::now();
    let burst = futures::future::join_all((0..BURST).map(|_| async {
        let connected = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(api.addr),
        )
        .await;
        (connected, started.elapsed())
    }))
    .await;
    let failed: Vec<String> = burst
        .iter()
        .filter_map(|(connected, _)| match connected {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no handshake within 3 s".to_owned()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {BURST} connections past the cap were not held; the first: {}",
        failed.len(),
        failed[0]
    );
    let slowest = burst.iter().map(|(_, at)| *at).max().unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "the last of {BURST} handshakes took {slowest:?}: SYNs were dropped"
    );
    assert_eq!(open_connections(&scrape(&mut observer).await), Some(cap));
}
