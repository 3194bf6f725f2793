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
//!
//! At most `upstream.pool_max_connections` connections are open to one
//! upstream (idle, lent to a response, or being opened; split across
//! thread-per-core workers, rounded up). A request that finds none idle and
//! the upstream at its cap waits for one to come back or to close, up to
//! `upstream.pool_wait_timeout`, then fails with
//! [`ProxyError::PoolExhausted`] (503, never a breaker failure: the upstream
//! answered nothing wrong), counted in `gateway_upstream_pool_exhausted_total`.
//! The wait is in the response future rather than in `poll_ready`: which
//! upstream a request needs is only known once it is chosen.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::UpstreamConfig;
use crate::proxy::ProxyError;
use crate::request_body::RequestBody;

/// Metric: requests that found their upstream at `pool_max_connections`
/// for all of `pool_wait_timeout`.
pub const POOL_EXHAUSTED_TOTAL: &str = "gateway_upstream_pool_exhausted_total";

/// Metric: connections open to each upstream.
pub const POOL_CONNECTIONS: &str = "gateway_upstream_connections";

/// The pool of one upstream.
pub struct HostPool {
    /// `host:port` to connect to.
    addr: String,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// One permit per open connection; a connection's task holds its permit
    /// until the connection closes.
    open: Arc<Semaphore>,
    /// Requests waiting for room (only they need to hear of a return).
    waiting: AtomicUsize,
    /// Woken when a connection goes back to `idle` while someone waits.
    returned: Notify,
    wait_timeout: Duration,
    exhausted: metrics::Counter,
    connections: metrics::Gauge,
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
    /// A pool for `authority` (port 80 when it names none), one of `share`
    /// pools to the same upstream (thread-per-core workers each have one):
    /// it may open `upstream.pool_max_connections / share` (rounded up).
    pub fn new(authority: &Authority, config: &UpstreamConfig, share: usize) -> Self {
        metrics::describe_counter!(
            POOL_EXHAUSTED_TOTAL,
            "Requests answered 503 because their upstream had pool_max_connections open for all of pool_wait_timeout."
        );
        metrics::describe_gauge!(
            POOL_CONNECTIONS,
            "Connections open to each upstream (idle, in use or being opened)."
        );
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let cap = config.pool_max_connections.div_ceil(share.max(1));
        Self {
            exhausted: metrics::counter!(POOL_EXHAUSTED_TOTAL, "upstream" => addr.clone()),
            connections: metrics::gauge!(POOL_CONNECTIONS, "upstream" => addr.clone()),
            addr,
            idle: Mutex::new(VecDeque::new()),
            max_idle: config.pool_max_idle,
            idle_timeout: config.pool_idle_timeout.get(),
            connect_timeout: config.connect_timeout.get(),
            open: Arc::new(Semaphore::new(cap.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
            returned: Notify::new(),
            wait_timeout: config.pool_wait_timeout.get(),
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

    /// A new connection, within the pool's cap: at the cap, waits for a
    /// connection to close (then opens one) or to come back idle (then takes
    /// it), up to `upstream.pool_wait_timeout`.
    pub async fn open(&self) -> Result<SendRequest<RequestBody>, ProxyError> {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return self.connect(permit).await;
        }
        self.wait_for_room().await
    }

    /// The slow path of [`HostPool::open`].
    async fn wait_for_room(&self) -> Result<SendRequest<RequestBody>, ProxyError> {
        // Registered before looking at the idle stack: `push` reads
        // `waiting` after it put a connection there (both under or after
        // the idle lock), so a return between the look and the wait still
        // wakes this request.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let deadline = Instant::now() + self.wait_timeout;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(sender) = self.try_checkout() {
                return Ok(sender);
            }
            tokio::select! {
                permit = self.open.clone().acquire_owned() => {
                    let permit = permit.expect("the pool's semaphore is never closed");
                    return self.connect(permit).await;
                }
                () = &mut returned => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.exhausted.increment(1);
                    tracing::debug!(upstream = %self.addr, "upstream connection pool exhausted");
                    return Err(ProxyError::PoolExhausted);
                }
            }
        }
    }

    /// Opens a new connection and spawns the task that drives it; the task
    /// holds `permit` until the connection closes.
    async fn connect(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<RequestBody>, ProxyError> {
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
        let connections = self.connections.clone();
        connections.increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
            connections.decrement(1.0);
            drop(permit);
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
        drop(idle);
        // Only a pool at its cap has waiters; otherwise this is one load.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_waiters();
        }
    }
}

/// A request counted in [`HostPool`]'s `waiting` until it stops waiting.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
