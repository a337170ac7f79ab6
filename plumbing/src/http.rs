//! The HTTP server skeleton every service uses: bind, log the address, serve until
//! the shutdown token fires, probe a running service's health, answer problems.

use std::net::SocketAddr;

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds `host:port` (port 0 picks a free one) and logs the bound address as
/// `listening` with an `addr` field, which test harnesses read.
///
/// # Errors
/// The I/O error when the address cannot be bound (e.g. the port is taken).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(addr = %addr, "listening");
    Ok(listener)
}

/// Serves `router` until `shutdown` is cancelled, then lets in-flight requests
/// finish (graceful shutdown).
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Serves `router` until `shutdown`, then waits for `work` (the service's main
/// loop, which watches the same token) to finish its in-flight work.
///
/// # Errors
/// The server's I/O error, or the main loop's panic.
pub async fn serve_alongside(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    work: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let served = serve(listener, router, shutdown).await;
    work.await.context("the service's main loop panicked")?;
    served.context("HTTP server failed")
}

/// Asks `http://127.0.0.1:<port>/health` (within 3 s) and expects `200`.
///
/// # Errors
/// Why the service is not healthy: not listening, timed out, or another status.
pub async fn probe_health(port: u16) -> Result<(), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if port == 0 {
        return Err("PORT is 0 (a random port): nothing to probe".into());
    }
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = [0_u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        match &head {
            b"HTTP/1.1 200" => Ok(()),
            other => Err(format!(
                "answered {:?}",
                String::from_utf8_lossy(other).trim()
            )),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), probe)
        .await
        .map_err(|_| "no answer within 3 s".to_owned())?
}

/// An `application/problem+json` response (RFC 9457) with a stable `code`.
#[must_use]
pub fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
