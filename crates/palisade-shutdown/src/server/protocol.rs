//! HTTP/1 or HTTP/2: which hyper connection serves an accepted socket.
//!
//! hyper-util's auto builder tells the two apart by *reading* up to 24 bytes
//! and replaying them to hyper. hyper's HTTP/1 read buffer then starts with
//! those few bytes in it, wants 8 KiB free for the next read, and doubles to
//! 16 KiB on every connection, for the connection's whole life. Here the
//! bytes are *peeked* instead: hyper's first read takes the whole request
//! head into one 8 KiB buffer, and no bytes are copied aside. The decision
//! is the auto builder's (the HTTP/2 prior-knowledge preface, or not).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use crate::BoxError;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client opens with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of the preface that no HTTP/1 method shares (`POST`, `PUT`,
/// `PATCH`, `PROPFIND` and `PURGE` share `P` and `PR`).
const DISTINCT: usize = 3;

/// The protocols a [`Server`](super::Server) speaks and hyper's settings
/// for each: HTTP/1 (with upgrades) always, HTTP/2 with prior knowledge
/// unless [`Http::http1_only`].
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::server::Http;
///
/// let mut http = Http::new();
/// http.http1().header_read_timeout(Duration::from_secs(10));
/// if let Some(h2) = http.http2() {
///     h2.max_concurrent_streams(128);
/// }
/// let http1_only = Http::new().http1_only();
/// assert!(!http1_only.speaks_http2());
/// ```
#[derive(Debug, Clone)]
pub struct Http {
    http1: http1::Builder,
    http2: Option<http2::Builder<TokioExecutor>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// HTTP/1 and HTTP/2 with hyper's defaults, timed by tokio (hyper's
    /// HTTP/1 `header_read_timeout` and HTTP/2 keep-alive need a timer).
    pub fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new());
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Self {
            http1,
            http2: Some(http2),
        }
    }

    /// Serve HTTP/1 only: an HTTP/2 preface is then an HTTP/1 parse error.
    pub fn http1_only(mut self) -> Self {
        self.http2 = None;
        self
    }

    /// hyper's HTTP/1 settings.
    pub fn http1(&mut self) -> &mut http1::Builder {
        &mut self.http1
    }

    /// hyper's HTTP/2 settings; `None` when [`Http::http1_only`].
    pub fn http2(&mut self) -> Option<&mut http2::Builder<TokioExecutor>> {
        self.http2.as_mut()
    }

    /// Whether HTTP/2 with prior knowledge is served.
    pub fn speaks_http2(&self) -> bool {
        self.http2.is_some()
    }

    /// Serves `stream` with the protocol [`detect`] chose.
    pub(crate) fn serve<H>(&self, stream: TcpStream, h2: bool, service: H) -> Connection<H>
    where
        H: HttpService<Incoming, Future: Send + 'static, ResBody: Send + 'static> + Send + 'static,
        <H::ResBody as Body>::Data: Send,
        <H::ResBody as Body>::Error: Into<BoxError>,
    {
        let io = TokioIo::new(stream);
        match (&self.http2, h2) {
            (Some(builder), true) => Connection::H2 {
                conn: Box::pin(builder.serve_connection(io, service)),
            },
            _ => Connection::H1 {
                conn: self.http1.serve_connection(io, service).with_upgrades(),
            },
        }
    }
}

/// Whether the first bytes on `stream` are the HTTP/2 preface, peeked (not
/// read). `Ok(None)`: the peer closed before sending a byte.
///
/// Bytes that could start either protocol (`P`, `PR`) are peeked again
/// after a short, growing pause; a client that stops there is HTTP/1 after
/// about a second (hyper then answers or times it out), so a stalled peer
/// costs a handful of wake-ups, not a busy loop.
pub(crate) async fn detect(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut buf = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if !PREFACE.starts_with(&buf[..n]) {
            return Ok(Some(false));
        }
        if n >= DISTINCT {
            return Ok(Some(true));
        }
        if pause > Duration::from_millis(512) {
            return Ok(Some(false));
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

pin_project! {
    /// One accepted connection, served by hyper's HTTP/1 or HTTP/2 state
    /// machine.
    #[project = ConnectionProj]
    pub(crate) enum Connection<H>
    where
        H: HttpService<Incoming>,
    {
        /// HTTP/1, upgrades allowed.
        H1 { #[pin] conn: http1::UpgradeableConnection<TokioIo<TcpStream>, H> },
        /// HTTP/2 with prior knowledge. Boxed: its state is more than twice
        /// HTTP/1's, and the task of every HTTP/1 connection would be sized
        /// for it (about 850 bytes more each).
        H2 { conn: Pin<Box<http2::Connection<TokioIo<TcpStream>, H, TokioExecutor>>> },
    }
}

impl<H> Connection<H>
where
    H: HttpService<Incoming, Future: Send + 'static, ResBody: Send + 'static> + Send + 'static,
    <H::ResBody as Body>::Data: Send,
    <H::ResBody as Body>::Error: Into<BoxError>,
{
    /// HTTP/1: close once the response in flight (if any) is written;
    /// HTTP/2: GOAWAY, then close once the open streams finish.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ConnectionProj::H1 { conn } => conn.graceful_shutdown(),
            ConnectionProj::H2 { conn } => conn.as_mut().graceful_shutdown(),
        }
    }
}

impl<H> Future for Connection<H>
where
    H: HttpService<Incoming, Future: Send + 'static, ResBody: Send + 'static> + Send + 'static,
    <H::ResBody as Body>::Data: Send,
    <H::ResBody as Body>::Error: Into<BoxError>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnectionProj::H1 { conn } => conn.poll(cx),
            ConnectionProj::H2 { conn } => conn.as_mut().poll(cx),
        }
    }
}
