//! Helpers for the pipeline's tests, and the local launcher (`cargo pipeline`).
//!
//! Every test gets its own freshly created databases and its own broker namespace
//! (all exchange and queue names prefixed), so tests run in parallel without
//! colliding, and everything is dropped again when the test ends.

#![allow(clippy::unwrap_used, missing_docs)]

pub mod auth;
pub mod broker;
pub mod db;
pub mod faults;
pub mod hostile;
pub mod legacy;
pub mod messages;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod tls_postgres;
pub mod worker;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// An HTTP client for tests. (reqwest is built with rustls but no bundled crypto
/// provider, for the services' OTLP exporter: this installs ring first, as the
/// services do.)
#[must_use]
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a server the test
/// starts itself, or for a port where nothing listens).
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The workspace's root: the checkout the tests hold the code's files against.
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of `path` (from the workspace's root); panics naming it when it
/// cannot be read.
#[must_use]
pub fn read_workspace_file(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A short random suffix for database and namespace names.
#[must_use]
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout`
/// naming `what`. For waiting on another process, never `sleep` and hope.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs async clean-up code from a `Drop` impl: on its own thread with its own
/// runtime, because `Drop` cannot await and may run inside or outside a runtime.
pub fn block_on_cleanup<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(future),
            Err(e) => eprintln!("clean-up skipped: no runtime: {e}"),
        }
    });
    let _ = handle.join();
}

/// Where the address (`host:port`, after scheme and credentials) is in `url`.
fn address_span(url: &str) -> std::ops::Range<usize> {
    let start = url
        .find('@')
        .map(|i| i + 1)
        .or_else(|| url.find("://").map(|i| i + 3))
        .unwrap_or(0);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    start..end
}

/// `url` with its address (`host:port`) replaced by `addr`.
#[must_use]
pub fn swap_host(url: &str, addr: SocketAddr) -> String {
    let span = address_span(url);
    format!("{}{addr}{}", &url[..span.start], &url[span.end..])
}

/// `url` with `user` (and `password`, which must need no percent-encoding)
/// as its credentials instead of its own.
///
/// # Panics
/// When `url` has no scheme.
#[must_use]
pub fn with_login(url: &str, user: &str, password: Option<&str>) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        panic!("not a URL: {url}");
    };
    let host = &url[address_span(url).start..];
    let credentials = match password {
        Some(password) => format!("{user}:{password}"),
        None => user.to_owned(),
    };
    format!("{}{credentials}@{host}", &url[..start])
}

/// `host:port` of a server URL (`default_port` when it names none).
#[must_use]
pub fn server_addr(url: &str, default_port: u16) -> String {
    let host = &url[address_span(url)];
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// A deterministic pseudo-random sequence (xorshift64*), enough for sleeps and
/// fault timing.
pub struct Jitter(u64);

impl Jitter {
    /// A sequence from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value, below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// The value of a sample line (`name{labels} value`) of a `/metrics` scrape.
#[must_use]
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.split(' ').next()?.parse().ok()
    })
}

/// `GET /ready` of the service on `127.0.0.1:port`: its status and body.
pub async fn ready(port: u16) -> (u16, String) {
    let response = http_client()
        .get(format!("http://127.0.0.1:{port}/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Waits until the service's `/ready` answers `status`; returns the body.
pub async fn ready_becomes(port: u16, status: u16, what: &str) -> String {
    eventually(Duration::from_secs(10), what, || async {
        let (got, body) = ready(port).await;
        (got == status).then_some(body)
    })
    .await
}

/// Asserts that the service on `port`, which reaches its database through
/// `db` and its broker through `broker`, is ready exactly while both answer:
/// 503 naming the broker (and not the database) while the broker is cut, 503
/// naming the database while the database is cut, ready again after each.
pub async fn assert_ready_follows(port: u16, db: &proxy::TcpProxy, broker: &proxy::TcpProxy) {
    ready_becomes(port, 200, "the service to be ready").await;

    broker.cut();
    let body = ready_becomes(port, 503, "not ready without the broker").await;
    assert!(body.contains("broker"), "{body}");
    assert!(!body.contains("database"), "{body}");
    broker.restore();
    ready_becomes(port, 200, "ready again with the broker back").await;

    db.cut();
    let body = ready_becomes(port, 503, "not ready without the database").await;
    assert!(body.contains("database"), "{body}");
    db.restore();
    ready_becomes(port, 200, "ready again with the database back").await;
}

/// A service's and a broker's configuration whose URLs hold `password`, for
/// checking that a configuration never shows it ([`assert_hides`]).
#[must_use]
pub fn configs_holding(
    password: &str,
) -> (
    plumbing::config::ServiceConfig,
    plumbing::config::BrokerConfig,
) {
    let service = service_config(format!("postgres://app:{password}@db.internal/x"));
    let broker = plumbing::config::BrokerConfig {
        url: plumbing::config::Secret::url(format!("amqps://app:{password}@mq.internal/%2f")),
        namespace: String::new(),
    };
    (service, broker)
}

/// Asserts that `config`'s `Debug` (plain and pretty) does not show `password`.
///
/// # Panics
/// When it does.
pub fn assert_hides(password: &str, config: &impl std::fmt::Debug) {
    let shown = format!("{config:?} {config:#?}");
    assert!(shown.contains("db.internal"), "{shown}");
    assert!(!shown.contains(password), "{shown}");
}

/// The service part of a config for a service run in a test: `database_url`,
/// a free port on loopback, the default pool, migrations at start, the default
/// HTTP limits, no metrics exporter. A test that needs another pool sets `pool` on the result.
#[must_use]
pub fn service_config(database_url: String) -> plumbing::config::ServiceConfig {
    plumbing::config::ServiceConfig {
        database_url: plumbing::config::Secret::url(database_url),
        host: "127.0.0.1".into(),
        port: 0,
        pool: plumbing::db::PoolOptions::default(),
        migrate_on_start: true,
        http: plumbing::http::Limits::DEFAULT,
        export: plumbing::export::ExportConfig::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_address_of_a_url() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            swap_host("amqp://guest:guest@127.0.0.1:5672/%2f", addr),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(
            swap_host("postgres://postgres@127.0.0.1:5432/db", addr),
            "postgres://postgres@127.0.0.1:4000/db"
        );
        assert_eq!(
            swap_host("postgres://localhost", addr),
            "postgres://127.0.0.1:4000"
        );
        assert_eq!(server_addr("amqp://g:g@rabbit/%2f", 5672), "rabbit:5672");
        assert_eq!(
            with_login(
                "postgres://postgres:pw@db:5432/orders",
                "orders_api",
                Some("x")
            ),
            "postgres://orders_api:x@db:5432/orders"
        );
        assert_eq!(
            with_login("postgres://localhost/orders", "orders_api", None),
            "postgres://orders_api@localhost/orders"
        );
    }
}
