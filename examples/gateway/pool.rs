//! Keep-alive connection pool to the upstreams, on hyper's HTTP/1.1
//! connection API.
//!
//! Why not `hyper_util`'s legacy `Client`: per request it hashes a pool key,
//! boxes a future that embeds the connector, and spawns a task to watch the
//! connection become idle again. Measured with `scripts/bench-proxy.sh`,
//! that was a visible share of the gateway's CPU per request. Here a
//! connection is leased with a response body ([`Lease`]) and pushed back on
//! an idle stack the moment that body ends; the next request pops it.
//!
//! Idle connections are reused most-recent first (warm in cache, and the
//! rest age out): entries idle longer than `upstream.pool_idle_timeout` are
//! dropped when a connection is taken and when one is returned, and at most
//! `upstream.pool_max_idle` are kept per upstream. A connection the upstream
//! closed is noticed by its task (hyper reads the FIN) and skipped.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::UpstreamConfig;
use crate::proxy::ProxyError;
use crate::request_body::RequestBody;

/// The pool of one upstream.
pub struct HostPool {
    /// `host:port` to connect to.
    addr: String,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl fmt::Debug for HostPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostPool")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HostPool {
    /// A pool for `authority` (port 80 when it names none).
    pub fn new(authority: &Authority, config: &UpstreamConfig) -> Self {
        Self {
            addr: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            idle: Mutex::new(VecDeque::new()),
            max_idle: config.pool_max_idle,
            idle_timeout: config.pool_idle_timeout.get(),
            connect_timeout: config.connect_timeout.get(),
        }
    }

    /// The most recently used idle connection that can take a request right
    /// now, if any; the caller opens a new one otherwise.
    ///
    /// A connection is pushed back when its last response body ends, which
    /// can be a moment before its task has finished that exchange (or, after
    /// an early response, while the request body is still uploading). Such a
    /// connection is not waited for: it goes to the bottom of the stack and
    /// the next one is tried, so no request queues behind another's upload.
    ///
    /// A connection idle longer than `upstream.pool_idle_timeout` is closed
    /// here rather than used: the upstream may be closing it at this very
    /// moment (its own keep-alive timeout), and a request written into that
    /// race fails after it was sent.
    pub fn try_checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        for _ in 0..idle.len() {
            let Some(entry) = idle.pop_back() else { break };
            if now.duration_since(entry.since) > self.idle_timeout {
                // Older ones sit below it: close them all.
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            if !entry.sender.is_closed() {
                idle.push_front(entry);
            }
        }
        None
    }

    /// Opens a new connection and spawns the task that drives it.
    pub async fn connect(&self) -> Result<SendRequest<RequestBody>, ProxyError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.as_str()))
                .await
                .map_err(|_| ProxyError::Connect(std::io::ErrorKind::TimedOut.into()))?
                .map_err(ProxyError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // One flat write buffer, as on the server side (main.rs).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Upstream)?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn push(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        // One clock read per request, here: expiry is checked when a
        // connection comes back, the one moment the stack changes anyway.
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: drop what idled too long (closing those connections).
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { sender, since: now });
        }
    }
}

/// A pooled connection lent to one response; see [`crate::body::Body`].
/// Dropping it without [`Lease::release`] closes the connection (its
/// response was not read to the end, so it cannot carry another).
pub struct Lease {
    sender: SendRequest<RequestBody>,
    pool: Arc<HostPool>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Lends `sender`, which belongs to `pool`.
    pub fn new(sender: SendRequest<RequestBody>, pool: Arc<HostPool>) -> Self {
        Self { sender, pool }
    }

    /// Returns the connection to its pool for the next request.
    pub fn release(self) {
        self.pool.push(self.sender);
    }
}
