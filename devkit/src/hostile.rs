//! Hostile HTTP clients, for the tests and the benchmark of the services' HTTP
//! limits: a connection that sends half a request head and stops, one kept idle
//! after a request, and a normal client to measure beside them.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::raw_http::{RawConnection, RawResponse};

/// What a normal client saw: the latency of each answer, and what went wrong.
#[derive(Default)]
pub struct Normal {
    /// The latency of each answer as expected.
    pub latencies: Vec<Duration>,
    /// What went wrong, one line per request.
    pub failures: Vec<String>,
}

/// A normal client until `stop`: alternately `POST /orders` (with the bearer
/// `token`) on a keep-alive connection and `GET /health` on a new connection
/// each time (so accepting goes on too), one request every 10 ms.
pub async fn normal_client(base: String, token: String, stop: Arc<AtomicBool>) -> Normal {
    let pooled = crate::auth::bearer_client(&token, reqwest::Client::builder());
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut seen = Normal::default();
    let mut i = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let started = Instant::now();
        let (request, expected) = if i % 2 == 0 {
            let body = format!(r#"{{"amount": {}.{:02}}}"#, i, i % 100);
            let request = pooled
                .post(format!("{base}/orders"))
                .header("content-type", "application/json")
                .body(body);
            (request, 201)
        } else {
            (fresh.get(format!("{base}/health")), 200)
        };
        match request.timeout(Duration::from_secs(5)).send().await {
            Ok(res) if res.status() == expected => match res.bytes().await {
                Ok(_) => seen.latencies.push(started.elapsed()),
                Err(e) => seen.failures.push(format!("request {i}: body: {e}")),
            },
            Ok(res) => seen
                .failures
                .push(format!("request {i}: status {}", res.status())),
            Err(e) => seen.failures.push(format!("request {i}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// When a slow-header connection was seen closed, measured from before its
/// connect (the server's clock cannot have started earlier) and from its
/// connect's end (nor much later: the server takes it at once).
pub struct SlowClose {
    /// From before its connect.
    pub from_connecting: Duration,
    /// From its connect's end.
    pub from_connected: Duration,
}

/// A connection to `addr` that sends half a request head and stops; when it
/// was seen closed (`None`: still open after `wait`).
///
/// # Errors
/// When it cannot connect, or the server answers instead of closing.
pub async fn slow_header(addr: SocketAddr, wait: Duration) -> anyhow::Result<Option<SlowClose>> {
    let connecting = Instant::now();
    let mut connection = RawConnection::open(addr).await?;
    let connected = Instant::now();
    connection
        .send(b"POST /orders HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let closed = connection.closed_within(wait).await?;
    Ok(closed.map(|at| SlowClose {
        from_connecting: at - connecting,
        from_connected: at - connected,
    }))
}

/// When an idle connection was seen closed, measured from its request's sending
/// (the server's idle time cannot have begun before) and from its answer (nor
/// long after).
pub struct IdleClose {
    /// From its request's sending.
    pub from_request: Duration,
    /// From its answer.
    pub from_answer: Duration,
}

/// A connection to `addr` that asks `GET /health` with keep-alive, then stays
/// idle; when it was seen closed (`None`: still open after `wait`).
///
/// # Errors
/// When it cannot connect, is not answered 200 with keep-alive, or the server
/// sends more instead of closing.
pub async fn idle_keep_alive(
    addr: SocketAddr,
    wait: Duration,
) -> anyhow::Result<Option<IdleClose>> {
    let mut connection = RawConnection::open(addr).await?;
    let sent = Instant::now();
    let RawResponse {
        status,
        body,
        closes,
    } = connection.get("/health").await?;
    let answered = Instant::now();
    anyhow::ensure!(status == 200 && body == "OK", "answered {status} {body:?}");
    anyhow::ensure!(!closes, "the server did not keep the connection alive");
    let closed = connection.closed_within(wait).await?;
    Ok(closed.map(|at| IdleClose {
        from_request: at - sent,
        from_answer: at - answered,
    }))
}
