//! A lean open-loop load generator for `POST /orders`, for the benchmarks: each
//! request has its start time on a fixed schedule (one every 1/rate s) and goes
//! out on one of a set of keep-alive HTTP/1.1 connections, written and read by
//! hand. It shares the machine's two cores with the API and PostgreSQL, so it must
//! cost little: reqwest with a task per request cost about 120 µs of CPU per order
//! here, more than half of what the API itself spends.
//!
//! A request that found every connection busy is timed from its scheduled start,
//! as wrk2 and `pgbench --rate` do, so a slow server cannot hide its queue by
//! slowing the generator (coordinated omission). One that went out when a
//! connection was free is timed from when it went out, so the timer's
//! millisecond granularity is not charged to the server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

/// How long a request may wait for its answer before it counts as failed.
const HANG: Duration = Duration::from_secs(10);

/// What an open-loop run saw.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// Requests sent (those whose time came before the run ended and found a
    /// connection free by then).
    pub sent: u64,
    /// Answers 201.
    pub created: u64,
    /// Other answers, and requests lost with a broken connection.
    pub failures: u64,
    /// The latency of each 201.
    pub latencies: Vec<Duration>,
}

/// Posts orders with the bearer `token` to the API at `base_url` at `rate` per
/// second for `duration`, over `connections` keep-alive connections (a request
/// waits for a free one).
///
/// # Errors
/// When a connection cannot be opened.
pub async fn open_loop(
    base_url: &str,
    token: &str,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<OpenLoop> {
    let addr = devkit::server_addr(base_url, 80);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(10);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to the API at {addr}"))?;
        stream.set_nodelay(true)?;
        let (next, host) = (next.clone(), addr.clone());
        let authorization = format!("Bearer {token}");
        tasks.spawn(async move {
            let mut connection = Connection {
                stream: Some(stream),
                host,
                authorization,
                buffer: Vec::with_capacity(1024),
            };
            let mut seen = OpenLoop::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                // The run ends on time: what a slow server kept from going out
                // by then is not sent, and the rate achieved shows it.
                if i >= total || Instant::now() >= end {
                    break;
                }
                let scheduled = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                let from = if now < scheduled {
                    tokio::time::sleep_until(scheduled).await;
                    Instant::now()
                } else {
                    scheduled
                };
                seen.sent += 1;
                match tokio::time::timeout(HANG, connection.post(i)).await {
                    Ok(Ok(201)) => {
                        seen.created += 1;
                        seen.latencies.push(from.elapsed());
                    }
                    Ok(_) => seen.failures += 1,
                    Err(_) => {
                        // No answer in time: the connection is not reused.
                        connection.stream = None;
                        seen.failures += 1;
                    }
                }
            }
            seen
        });
    }
    let mut all = OpenLoop::default();
    for seen in tasks.join_all().await {
        all.sent += seen.sent;
        all.created += seen.created;
        all.failures += seen.failures;
        all.latencies.extend(seen.latencies);
    }
    Ok(all)
}

/// One keep-alive connection to the API (reopened after an error).
struct Connection {
    stream: Option<TcpStream>,
    host: String,
    /// `Bearer <token>`.
    authorization: String,
    buffer: Vec<u8>,
}

impl Connection {
    /// Posts order `i` (an amount unique to it) and returns the answer's status.
    async fn post(&mut self, i: u64) -> anyhow::Result<u16> {
        let result = self.exchange(i).await;
        if result.is_err() {
            // Whatever state the stream is in, it is not reused.
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, i: u64) -> anyhow::Result<u16> {
        let cents = 1 + (i * 7_919) % 99_999_999;
        let body = format!(r#"{{"amount": {}.{:02}}}"#, cents / 100, cents % 100);
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            self.authorization,
            body.len()
        );
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.host).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().context("no connection")?;
        stream.write_all(request.as_bytes()).await?;
        self.buffer.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let status = response.code.context("no status")?;
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .context("an answer without content-length")?;
                let closes = response.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                });
                while self.buffer.len() < head + length {
                    if stream.read_buf(&mut self.buffer).await? == 0 {
                        bail!("the API closed the connection mid-answer");
                    }
                }
                if closes {
                    self.stream = None;
                }
                return Ok(status);
            }
            if stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the API closed the connection");
            }
        }
    }
}
