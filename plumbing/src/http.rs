//! The HTTP server skeleton every service uses: bind, log the address, serve until
//! the shutdown token fires (with limits on slow, idle and excess connections),
//! probe a running service's health, answer problems.

use std::{
    convert::Infallible,
    net::SocketAddr,
    num::NonZeroU32,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::CommonMetrics;

/// Binds `host:port` (port 0 picks a free one) and logs the bound address as
/// `listening` with an `addr` field, which test harnesses read.
///
/// # Errors
/// When `host` cannot be resolved, or none of its addresses can be bound (e.g.
/// the port is taken): the last address's I/O error.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}:{port}"))?;
    let mut failed = None;
    for addr in addrs {
        match listen_on(addr) {
            Ok(listener) => {
                let addr: SocketAddr = listener.local_addr()?;
                tracing::info!(addr = %addr, "listening");
                return Ok(listener);
            }
            Err(e) => failed = Some(e),
        }
    }
    Err(match failed {
        Some(e) => anyhow::Error::new(e).context(format!("cannot listen on {host}:{port}")),
        None => anyhow::anyhow!("cannot listen on {host}:{port}: it resolves to no address"),
    })
}

/// The listen backlog: connections whose handshake the kernel completes and
/// holds until the server accepts them (at [`Limits::max_connections`], or in a
/// burst faster than the accept loop). The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4). The standard
/// library's 128 overflows in a burst of connections (a flood, a load balancer
/// opening its pool): the kernel then drops the SYNs past it, and each of those
/// clients, a normal one as much as an attacker, waits a 1 s retransmission.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (`SO_REUSEADDR` set, as the
/// standard library's on Unix).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How the server bounds its clients' connections (`HTTP_*` variables, see
/// [`crate::config::ServiceConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `HTTP_HEADER_READ_TIMEOUT`: longest from a connection's accept, or from
    /// the first byte of a later request, to that request's complete head; then
    /// the connection is closed (a client that sends half a head and stops).
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`: longest a keep-alive connection may sit idle between
    /// a response and the next request's first byte. Longer than the idle timeout
    /// of the load balancer in front (an AWS ALB's is 60 s), so that it is always
    /// the balancer that closes an idle connection: were the server first, the
    /// balancer could send a request on a connection the server is closing, and
    /// its client would get a 502.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: most connections open at once. Beyond it new
    /// clients wait in the kernel's listen backlog instead of taking the
    /// process's file descriptors (which its database pool needs too).
    pub max_connections: NonZeroU32,
}

impl Limits {
    /// The defaults: 10 s to send a head, 75 s idle, 10,000 connections.
    pub const DEFAULT: Self = Self {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_connections: NonZeroU32::new(10_000).expect("not zero"),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within the header-read timeout.
    HeaderTimeout,
    /// Idle (no request) for the idle timeout.
    IdleTimeout,
}

impl CloseReason {
    /// Its label in metrics and logs: `header_timeout`, `idle_timeout`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled;
/// then stops accepting, lets each connection finish its in-flight request
/// (idle ones close at once) and returns once all are closed.
///
/// Our own accept loop over hyper's HTTP/1 connections, rather than
/// `axum::serve`, which bounds neither the time to send a request head nor
/// idle keep-alive time nor the number of connections. (axum is built without
/// its `http2` feature: HTTP/1.1 is all the services speak, behind a load
/// balancer that speaks HTTP/1.1 to its targets.)
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<CommonMetrics>,
    shutdown: CancellationToken,
) {
    let cap = limits.max_connections.get();
    // One permit per open connection, taken *before* accepting (as mini-redis
    // does): at the cap the loop stops accepting, so excess clients wait in the
    // listen backlog rather than as file descriptors of this process.
    let permits = Arc::new(Semaphore::new(cap as usize));
    metrics.set_max_connections(cap);
    let mut http1 = http1::Builder::new();
    // hyper's own header timeout restarts after every response, so it would also
    // bound idle time with the same value; each connection's watchdog below
    // times the two apart.
    http1.header_read_timeout(None);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client gave up before we took it: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory, say: every retry would fail
                // the same way, so wait (logging once a second at most).
                tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Responses are small and written whole: Nagle would only delay them.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let open = OpenConnection::new(metrics.clone(), permit);
        let connection = serve_connection(
            http1.clone(),
            stream,
            router.clone(),
            limits,
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let ended = connection.await;
            match ended {
                Ended::Finished(Ok(())) => {}
                Ended::Finished(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection failed");
                }
                Ended::Closed(reason) => {
                    // Debug, not warn: under an attack this is one line per
                    // connection, and the counter tells operators already.
                    tracing::debug!(peer = %peer, reason = reason.as_str(), "closed an HTTP connection");
                    open.metrics.connection_closed(reason);
                }
            }
            drop(open);
        });
    }
    drop(listener);
    // Each connection holds a permit until it is closed: all of them back means
    // every connection has finished (each saw the token and shuts down gracefully).
    let _all = permits.acquire_many(cap).await;
}

/// Accept errors that concern one client only.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// An open connection, counted in the gauge and holding its permit.
struct OpenConnection {
    metrics: Arc<CommonMetrics>,
    permit: Option<OwnedSemaphorePermit>,
}

impl OpenConnection {
    fn new(metrics: Arc<CommonMetrics>, permit: OwnedSemaphorePermit) -> Self {
        metrics.connection_opened();
        Self {
            metrics,
            permit: Some(permit),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // The gauge first, then the permit: a connection accepted in its place
        // must never be counted beside it.
        self.metrics.connection_ended();
        drop(self.permit.take());
    }
}

/// How a connection ended.
enum Ended {
    /// hyper finished it: the client closed it, or it failed, or it was shut
    /// down gracefully.
    Finished(hyper::Result<()>),
    /// The server closed it when a timeout passed.
    Closed(CloseReason),
}

/// Serves one connection until it ends; closes it when its watchdog's deadline
/// passes, and shuts it down gracefully on `shutdown`.
async fn serve_connection(
    http1: http1::Builder,
    stream: TcpStream,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Ended {
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        stream,
        watch: watch.clone(),
    });
    let service = TowerToHyperService::new(Tracked {
        router,
        watch: watch.clone(),
    });
    let connection = http1.serve_connection(io, service);
    let mut connection = pin!(connection);
    let mut cancelled = pin!(shutdown.cancelled());
    let mut draining = false;
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    std::future::poll_fn(|cx| {
        if !draining && cancelled.as_mut().poll(cx).is_ready() {
            draining = true;
            // Idle: closes now; mid-request: answers it, then closes.
            connection.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ended::Finished(result));
        }
        // Only polling the connection moves the watch (reads, requests,
        // responses all happen inside it), so its deadline is current here.
        if let Some((deadline, reason)) = watch.deadline(&limits) {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closed(reason));
            }
        }
        Poll::Pending
    })
    .await
}

/// Where a connection is in its cycle of requests, for its timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head to complete, since the connection was
    /// accepted or since the head's first byte arrived.
    Head(Instant),
    /// Serving this many requests (their response bodies not yet sent).
    Busy(usize),
    /// Idle since the last response.
    Idle(Instant),
}

/// A connection's phase, shared by its I/O ([`Watched`]) and its service
/// ([`Tracked`]). Only the connection's own task touches it, so the lock is
/// never contended.
struct Watch(Mutex<Phase>);

impl Watch {
    fn new() -> Self {
        Self(Mutex::new(Phase::Head(Instant::now())))
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes arrived: an idle connection starts a request head. (Bytes of a
    /// request body, or pipelined ones, arrive while busy and change nothing: a
    /// pipelined partial head left after a response is timed as idle, no longer
    /// than an idle client could stay anyway.)
    fn read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
    }

    /// A request head is complete: its request is being served.
    fn request_started(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
    }

    /// A response was sent (or its request abandoned).
    fn request_ended(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
    }

    /// When the connection is to be closed, and why; none while a request is
    /// served (a handler's time is bounded by the service's own timeout).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, CloseReason)> {
        match *self.phase() {
            Phase::Head(since) => Some((
                since + limits.header_read_timeout,
                CloseReason::HeaderTimeout,
            )),
            Phase::Idle(since) => Some((since + limits.idle_timeout, CloseReason::IdleTimeout)),
            Phase::Busy(_) => None,
        }
    }
}

/// The connection's socket, telling its [`Watch`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, telling the connection's [`Watch`] when a request starts and
/// when its response has been sent.
#[derive(Clone)]
struct Tracked {
    router: Router,
    watch: Arc<Watch>,
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request<Incoming>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        // Counted from here until the response body is dropped: hyper drops it
        // once it has taken its last bytes, or when the request is abandoned.
        let in_flight = InFlight::start(self.watch.clone());
        let response = self.router.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A request being served, until dropped.
struct InFlight(Arc<Watch>);

impl InFlight {
    fn start(watch: Arc<Watch>) -> Self {
        watch.request_started();
        Self(watch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` until `shutdown`, then waits for `work` (the service's main
/// loop, which watches the same token) to finish its in-flight work.
///
/// # Errors
/// The main loop's panic.
pub async fn serve_alongside(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<CommonMetrics>,
    shutdown: CancellationToken,
    work: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    serve(listener, router, limits, metrics, shutdown).await;
    work.await.context("the service's main loop panicked")
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
