//! HTTP/1.1 on a bare TCP connection, for tests and benchmarks that must control
//! the connection itself (keep it idle, send half a request head, see exactly when
//! the server closes it), which a pooled client hides.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

/// One keep-alive connection, written and read by hand.
pub struct RawConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// A response read from a [`RawConnection`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Its status code.
    pub status: u16,
    /// Its body, as text.
    pub body: String,
    /// Whether the server said `connection: close`.
    pub closes: bool,
}

impl RawConnection {
    /// Connects to `addr` (with `TCP_NODELAY`).
    ///
    /// # Errors
    /// When the connection cannot be opened.
    pub async fn open(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(1024),
        })
    }

    /// Sends `bytes` as they are (a whole request, or a part of one).
    ///
    /// # Errors
    /// When the connection is broken.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// `GET <path>` with keep-alive; the response.
    ///
    /// # Errors
    /// When the connection breaks before the whole response arrived.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<RawResponse> {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await?;
        self.response().await
    }

    /// Reads one whole response (its head and a `content-length` body).
    ///
    /// # Errors
    /// When the connection breaks first, or the response has no length.
    pub async fn response(&mut self) -> anyhow::Result<RawResponse> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let status = response.code.context("no status")?;
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                };
                let length: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .context("a response without content-length")?;
                let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                while self.buffer.len() < head + length {
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        bail!("the server closed the connection mid-response");
                    }
                }
                let body = String::from_utf8_lossy(&self.buffer[head..head + length]).into_owned();
                self.buffer.drain(..head + length);
                return Ok(RawResponse {
                    status,
                    body,
                    closes,
                });
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the server closed the connection before answering");
            }
        }
    }

    /// Waits up to `timeout` for the server to close the connection (end of
    /// stream or reset); the instant it was seen closed, `None` if it is still
    /// open then.
    ///
    /// # Errors
    /// When the server sends bytes instead of closing.
    pub async fn closed_within(&mut self, timeout: Duration) -> anyhow::Result<Option<Instant>> {
        let mut byte = [0_u8; 1];
        match tokio::time::timeout(timeout, self.stream.read(&mut byte)).await {
            Err(_) => Ok(None),
            Ok(Ok(0) | Err(_)) => Ok(Some(Instant::now())),
            Ok(Ok(_)) => bail!("the server sent {:?} instead of closing", byte[0] as char),
        }
    }
}
