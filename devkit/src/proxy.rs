//! A fault-injecting TCP proxy: put it between a service and PostgreSQL or
//! RabbitMQ, then cut the network (open connections reset, new ones refused until
//! restored), reset open connections mid-stream, stall them (bytes held, nothing
//! closed) or slow them down, all without touching the shared server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards.
    Up,
    /// Holds every byte (connections stay open, new ones are accepted but get no
    /// answer): a hung network or server.
    Stalled,
    /// Refuses new connections (open ones were reset when it went down).
    Down,
}

/// A running proxy to one upstream address.
pub struct TcpProxy {
    /// Address clients connect to.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to reset every open connection.
    generation: watch::Sender<u64>,
    latency_micros: Arc<AtomicU64>,
    /// Connections refused while down.
    refused: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Up);
        let (generation, _) = watch::channel(0_u64);
        let latency_micros = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let accept = {
            let mode = mode.clone();
            let generation = generation.clone();
            let latency = latency_micros.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *mode.borrow() == Mode::Down {
                        drop(client);
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let cut = generation.subscribe();
                    let mode = mode.subscribe();
                    let upstream = upstream.clone();
                    let latency = latency.clone();
                    tokio::spawn(relay_connection(client, upstream, mode, cut, latency));
                }
            })
        };
        Self {
            addr,
            mode,
            generation,
            latency_micros,
            refused,
            accept,
        }
    }

    /// How many connections were refused while the proxy was down: a client
    /// that kept trying to reach the server through it.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Resets every open connection and refuses new ones: a network cut.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Down);
        self.reset();
    }

    /// Resets every open connection (mid-stream), still accepting new ones.
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Holds all traffic without closing anything, until [`Self::restore`].
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    /// Delays every chunk forwarded in either direction by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Forwards again (latency is kept; set it to zero separately).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Forwards one client connection until either side closes or the proxy resets it.
async fn relay_connection(
    client: TcpStream,
    upstream: String,
    mut mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
    latency: Arc<AtomicU64>,
) {
    // A connection accepted while stalled waits for the stall to end first.
    if mode.wait_for(|m| *m == Mode::Up).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        // Closing then sends RST, not FIN: a reset looks like a network cut.
        let _ = stream.set_zero_linger();
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone(), latency.clone());
    let down = pump(server_read, client_write, mode, latency);
    let reset = async {
        let _ = cut.changed().await;
    };
    tokio::select! {
        (write, read) = async { tokio::join!(up, down) } => {
            drop((write, read));
        }
        () = reset => {}
    }
}

/// Copies `from` to `to`, holding bytes while stalled and delaying each chunk by
/// the latency. Returns the halves (so the caller decides how they close).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    latency: Arc<AtomicU64>,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m != Mode::Stalled).await.is_err() {
            break;
        }
        let delay = latency.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    (from, to)
}
