//! Serving helper (feature `hyper`): accept, tell HTTP/1 from HTTP/2 by
//! peeking at the first bytes ([`Http`]), bound the edge ([`ConnectionLimits`]: a connection
//! cap, a first-bytes timeout, an idle timeout) and drain connections on
//! shutdown.
//!
//! # Metrics
//!
//! Besides the drain's `palisade_shutdown_connections_closed_total`:
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `palisade_server_accept_paused_total` | counter | | times accepting paused at `max_connections` |
//! | `palisade_server_accept_errors_total` | counter | | accept errors that are the listener's (e.g. `EMFILE`), each followed by a 50 ms pause |
//! | `palisade_server_connections_timed_out_total` | counter | `reason` = `first_bytes`/`idle` | connections closed by a [`ConnectionLimits`] timer |
//! | `palisade_server_connection_errors_total` | counter | `kind` = `head_too_large`/`malformed`/`header_timeout`/`incomplete`/`other` | connections hyper ended with an error: a request head over the HTTP/1 read buffer (hyper answered `431`), a malformed request (`400`), a head not complete in `header_read_timeout` (`408`), a client gone mid-message, anything else (an HTTP/2 protocol error, an I/O error) |

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::BoxError;
use crate::metric_names as metric_names_drain;

/// An HTTP server over a [`TcpListener`] whose connections can be drained.
///
/// [`Server::run`] accepts connections until [`ServerHandle::stop_accepting`]
/// (or [`ServerHandle::drain`]) closes the listener, so new connections are
/// refused. [`ServerHandle::drain`] then asks every connection to finish:
/// idle HTTP/1 keep-alive connections close at once, busy ones finish their
/// response with `Connection: close`, HTTP/2 connections get a GOAWAY and
/// finish their open streams. What remains when the drain's deadline fires
/// is force-closed. The [`ConnectionReport`] says how many ended which way.
///
/// ```no_run
/// # #[cfg(feature = "hyper")]
/// # async fn demo() -> std::io::Result<()> {
/// use std::convert::Infallible;
/// use palisade_shutdown::server::Server;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let svc = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, Infallible>(http::Response::new(String::from("hello")))
/// });
/// let server = Server::new(listener, svc);
/// let handle = server.handle();
/// tokio::spawn(server.run());
/// // ... at shutdown:
/// let report = handle
///     .drain(tokio::time::sleep(std::time::Duration::from_secs(30)))
///     .await;
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
pub struct Server<M> {
    listener: TcpListener,
    make: M,
    http: Arc<Http>,
    limits: ConnectionLimits,
    shared: Arc<Shared>,
    closed: ClosedOnDrop,
}

mod protocol;

pub use protocol::Http;

/// Metric names of the edge bounds (see the module docs).
pub mod metric_names {
    /// Counter: times accepting paused because `max_connections` were open.
    pub const ACCEPT_PAUSED: &str = "palisade_server_accept_paused_total";
    /// Counter: accept errors of the listener itself (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`), each followed by a short pause instead of a busy loop.
    pub const ACCEPT_ERRORS: &str = "palisade_server_accept_errors_total";
    /// Counter, label `reason` (`first_bytes`/`idle`): connections closed
    /// by a [`ConnectionLimits`](super::ConnectionLimits) timer.
    pub const TIMED_OUT: &str = "palisade_server_connections_timed_out_total";
    /// Counter, label `kind`: connections hyper ended with an error (see
    /// the module docs for the kinds). hyper answers the client itself
    /// (`431`, `400`, `408`) before the service sees a request, so this is
    /// the only record of those refusals.
    pub const CONNECTION_ERRORS: &str = "palisade_server_connection_errors_total";
}

/// The `kind` label of [`metric_names::CONNECTION_ERRORS`].
fn connection_error_kind(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        return "other";
    };
    if error.is_parse_too_large() {
        "head_too_large"
    } else if error.is_parse() {
        "malformed"
    } else if error.is_timeout() {
        "header_timeout"
    } else if error.is_incomplete_message() {
        "incomplete"
    } else {
        "other"
    }
}

/// Counts a connection error and logs it: at INFO the first time a head is
/// refused for its size (an operator may need a larger read buffer), at
/// DEBUG otherwise (a client can cause any number of these).
fn record_connection_error(error: &(dyn std::error::Error + 'static), peer: SocketAddr) {
    static FIRST_TOO_LARGE: std::sync::Once = std::sync::Once::new();
    let kind = connection_error_kind(error);
    metrics::counter!(metric_names::CONNECTION_ERRORS, "kind" => kind).increment(1);
    if kind == "head_too_large" {
        FIRST_TOO_LARGE.call_once(|| {
            tracing::info!(
                %error,
                %peer,
                "a request head did not fit the HTTP/1 read buffer: answered 431 by hyper \
                 (counted in palisade_server_connection_errors_total{{kind=\"head_too_large\"}}; \
                 further ones are logged at DEBUG)"
            );
        });
    }
    tracing::debug!(%error, %peer, kind, "connection ended with an error");
}

/// Bounds on client connections; every bound is off by default.
///
/// - `max_connections`: at the cap the server stops accepting (new
///   connections wait in the kernel's listen backlog, and are refused by the
///   kernel once it is full) and resumes as soon as one closes. Each pause is
///   counted.
/// - `first_bytes_timeout`: a connection that has not sent a byte in time is
///   closed. The HTTP/1-or-HTTP/2 detection waits for the first bytes with
///   no timer of its own, and HTTP/1's `header_read_timeout` only covers a
///   request head once it has begun, so without this a silent socket is
///   held forever.
/// - `idle_timeout`: a connection with no request in flight and none started
///   for this long is shut down gracefully (HTTP/1 closes when idle, HTTP/2
///   gets a GOAWAY). Checked once per period, so a connection goes between
///   one and two periods after its last request.
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::server::ConnectionLimits;
///
/// let limits = ConnectionLimits::new()
///     .max_connections(10_000)
///     .first_bytes_timeout(Duration::from_secs(30))
///     .idle_timeout(Duration::from_secs(60));
/// assert_eq!(limits.get_max_connections(), Some(10_000));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    max_connections: Option<usize>,
    first_bytes_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl ConnectionLimits {
    /// No bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most connections open at once (0 is treated as 1).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.max(1));
        self
    }

    /// Close a connection whose first byte has not arrived within `timeout`.
    pub fn first_bytes_timeout(mut self, timeout: Duration) -> Self {
        self.first_bytes_timeout = Some(timeout);
        self
    }

    /// Shut down a connection gracefully after `timeout` without requests.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The connection cap, if any.
    pub fn get_max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// The first-bytes timeout, if any.
    pub fn get_first_bytes_timeout(&self) -> Option<Duration> {
        self.first_bytes_timeout
    }

    /// The idle timeout, if any.
    pub fn get_idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }
}

struct Shared {
    stop: CancellationToken,
    listener_closed: CancellationToken,
    drain: CancellationToken,
    force: CancellationToken,
    open: AtomicUsize,
    accepted: AtomicU64,
    graceful: AtomicU64,
    forced: AtomicU64,
    conns: TaskTracker,
    /// Signalled whenever a connection closes, for an accept loop paused at
    /// `max_connections`.
    closed_one: Notify,
}

/// Cancels its token when dropped, i.e. when the listener is gone.
struct ClosedOnDrop(CancellationToken);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        // A permit is stored when nobody waits, so a pause that begins right
        // after this cannot miss it (the loop re-checks the count anyway).
        self.0.closed_one.notify_one();
    }
}

/// Makes the hyper service of each accepted connection.
///
/// Implemented by closures `FnMut(SocketAddr) -> H` (to attach the peer
/// address, see [`Server::from_fn`]) and by [`PerConnection`] (a tower
/// service cloned per connection, see [`Server::new`]).
pub trait MakeConnectionService {
    /// The hyper service of one connection.
    type Service;

    /// Makes the service for a connection from `peer`.
    fn make(&mut self, peer: SocketAddr) -> Self::Service;
}

impl<F, H> MakeConnectionService for F
where
    F: FnMut(SocketAddr) -> H,
{
    type Service = H;

    fn make(&mut self, peer: SocketAddr) -> H {
        self(peer)
    }
}

/// A tower service cloned for each connection; see [`Server::new`].
#[derive(Debug, Clone)]
pub struct PerConnection<S>(S);

impl<S: Clone> MakeConnectionService for PerConnection<S> {
    type Service = TowerToHyperService<S>;

    fn make(&mut self, _peer: SocketAddr) -> Self::Service {
        TowerToHyperService::new(self.0.clone())
    }
}

// === impl Server ===

impl<S> Server<PerConnection<S>> {
    /// A server for `service` (a tower service, cloned per connection) on
    /// `listener`, with [`Http::new`]'s defaults (HTTP/1 and HTTP/2).
    pub fn new(listener: TcpListener, service: S) -> Self {
        Server::from_fn(listener, PerConnection(service))
    }
}

impl<M> Server<M> {
    /// A server whose connections are served by `make(peer)`: a closure
    /// `FnMut(SocketAddr) -> H` where `H` is a `hyper::service::Service`,
    /// or any [`MakeConnectionService`].
    pub fn from_fn(listener: TcpListener, make: M) -> Self {
        let listener_closed = CancellationToken::new();
        Self {
            listener,
            make,
            http: Arc::new(Http::new()),
            limits: ConnectionLimits::default(),
            shared: Arc::new(Shared {
                stop: CancellationToken::new(),
                listener_closed: listener_closed.clone(),
                drain: CancellationToken::new(),
                force: CancellationToken::new(),
                open: AtomicUsize::new(0),
                accepted: AtomicU64::new(0),
                graceful: AtomicU64::new(0),
                forced: AtomicU64::new(0),
                conns: TaskTracker::new(),
                closed_one: Notify::new(),
            }),
            closed: ClosedOnDrop(listener_closed),
        }
    }

    /// The protocols and hyper's settings for each, to tune them.
    pub fn http_mut(&mut self) -> &mut Http {
        Arc::make_mut(&mut self.http)
    }

    /// Replaces the protocols and their settings (e.g.
    /// [`Http::http1_only`]). Every connection shares them (not a copy per
    /// connection).
    pub fn with_http(mut self, http: Http) -> Self {
        self.http = Arc::new(http);
        self
    }

    /// Bounds the connections: see [`ConnectionLimits`].
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// A handle to stop and drain this server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The listener's local address.
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<M, H, B> Server<M>
where
    M: MakeConnectionService<Service = H> + Send + 'static,
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Accepts connections until told to stop, serving each on its own task.
    /// Returns once the listener is closed; connections keep being served
    /// until they end or are drained.
    pub async fn run(self) {
        let Server {
            listener,
            mut make,
            http,
            limits,
            shared,
            closed,
        } = self;
        'accept: loop {
            if let Some(max) = limits.max_connections
                && !wait_below_cap(&shared, max).await
            {
                break 'accept;
            }
            let accepted = tokio::select! {
                biased;
                () = shared.stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Per-connection errors (reset before accept) are not
                    // the listener's; resource exhaustion (EMFILE) is, and
                    // retrying at once would spin.
                    if !is_connection_error(&error) {
                        tracing::warn!(%error, "accept failed");
                        metrics::counter!(metric_names::ACCEPT_ERRORS).increment(1);
                        tokio::select! {
                            () = shared.stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.accepted.fetch_add(1, Ordering::Relaxed);
            shared.open.fetch_add(1, Ordering::AcqRel);
            let open = OpenGuard(shared.clone());
            let http = http.clone();
            let service = make.make(peer);
            // Named for tokio-console under `--cfg tokio_unstable`.
            palisade_core::task::spawn_named(
                "palisade-shutdown connection",
                shared
                    .conns
                    .track_future(serve(stream, peer, http, service, limits, open)),
            );
        }
        drop(listener);
        drop(closed);
        tracing::info!("listener closed");
    }
}

/// Waits until fewer than `max` connections are open; `false` when the
/// server was told to stop meanwhile.
async fn wait_below_cap(shared: &Shared, max: usize) -> bool {
    if shared.open.load(Ordering::Acquire) < max {
        return true;
    }
    metrics::counter!(metric_names::ACCEPT_PAUSED).increment(1);
    tracing::warn!(
        max_connections = max,
        "connection cap reached, accepting paused"
    );
    while shared.open.load(Ordering::Acquire) >= max {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => return false,
            () = shared.closed_one.notified() => {}
        }
    }
    tracing::info!("below the connection cap, accepting again");
    true
}

/// Waits for the connection's first bytes and tells the protocol from
/// them (`Some(true)`: HTTP/2); `None` if they did not come in time (or the
/// peer closed first, or the server is draining).
async fn first_bytes(
    stream: &TcpStream,
    timeout: Option<Duration>,
    shared: &Shared,
) -> Option<bool> {
    let detect = async {
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, protocol::detect(stream))
                .await
                .unwrap_or_else(|_| {
                    metrics::counter!(metric_names::TIMED_OUT, "reason" => "first_bytes")
                        .increment(1);
                    Ok(None)
                }),
            None => protocol::detect(stream).await,
        }
    };
    tokio::select! {
        biased;
        // A connection that has not begun a request has nothing to finish.
        () = shared.drain.cancelled() => None,
        () = shared.force.cancelled() => None,
        detected = detect => detected.ok().flatten(),
    }
}

/// Serves one connection until it ends, is drained, times out idle or is
/// force-closed.
async fn serve<H, B>(
    stream: TcpStream,
    peer: SocketAddr,
    http: Arc<Http>,
    service: H,
    limits: ConnectionLimits,
    open: OpenGuard,
) where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let shared = open.0.clone();
    // Peeked, not read: hyper's first read takes the whole request head.
    let Some(h2) = first_bytes(&stream, limits.first_bytes_timeout, &shared).await else {
        if shared.drain.is_cancelled() && !shared.force.is_cancelled() {
            // Open at the drain, closed before it had begun a request.
            shared.graceful.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric_names_drain::CONNECTIONS_CLOSED, "how" => "graceful")
                .increment(1);
        }
        tracing::debug!(%peer, "no first bytes (in time), connection closed");
        return;
    };
    let activity = Arc::new(Activity::default());
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    let conn = http.serve(stream, h2, service);
    drop(http);
    let mut conn = pin!(conn);
    let mut draining = false;
    let idle_period = limits.idle_timeout.unwrap_or(Duration::MAX);
    let idle = tokio::time::sleep(idle_period.min(Duration::from_secs(86_400 * 365)));
    let mut idle = pin!(idle);
    let mut started_at_check = 0;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    record_connection_error(&error, peer);
                }
                if draining {
                    shared.graceful.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric_names_drain::CONNECTIONS_CLOSED, "how" => "graceful").increment(1);
                }
                break;
            }
            () = shared.force.cancelled() => {
                // Dropping the connection closes the socket.
                shared.forced.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric_names_drain::CONNECTIONS_CLOSED, "how" => "forced").increment(1);
                break;
            }
            () = shared.drain.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = idle.as_mut(), if limits.idle_timeout.is_some() && !draining => {
                let started = activity.started.load(Ordering::Relaxed);
                let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
                if busy || started != started_at_check {
                    started_at_check = started;
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_period);
                } else {
                    tracing::debug!(%peer, "idle timeout, closing the connection");
                    metrics::counter!(metric_names::TIMED_OUT, "reason" => "idle").increment(1);
                    // Not `draining`: a drain started later still counts it.
                    conn.as_mut().graceful_shutdown();
                    idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
                }
            }
        }
    }
    drop(open);
}

/// What the idle timer reads: requests started and in flight on one
/// connection. Relaxed is enough: both sides run on the connection's task.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

/// The connection's service, counting its requests for the idle timer.
struct Tracked<H> {
    inner: H,
    activity: Arc<Activity>,
}

impl<H, R> hyper::service::Service<R> for Tracked<H>
where
    H: hyper::service::Service<R>,
{
    type Response = H::Response;
    type Error = H::Error;
    type Future = TrackedFuture<H::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: InFlight(self.activity.clone()),
        }
    }
}

/// Ends a request's in-flight count when its future is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// Response future of [`Tracked`].
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: InFlight,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl<M> fmt::Debug for Server<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("handle", &self.handle())
            .finish()
    }
}

/// Controls a [`Server`]: stop accepting, drain, counts. Clones share the
/// server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

// === impl ServerHandle ===

impl ServerHandle {
    /// Stops accepting and waits until the listener is closed (from then on
    /// connection attempts are refused). Resolves at once if the server was
    /// dropped without running.
    pub async fn stop_accepting(&self) {
        self.shared.stop.cancel();
        self.shared.listener_closed.cancelled().await;
    }

    /// Stops accepting, asks every open connection to close gracefully and
    /// waits until they have; when `force_at` resolves first, the remaining
    /// connections are closed at once (their in-flight responses are cut).
    pub async fn drain<F: Future>(&self, force_at: F) -> ConnectionReport {
        self.stop_accepting().await;
        let open_at_drain = self.open_connections();
        let graceful_before = self.shared.graceful.load(Ordering::Relaxed);
        let forced_before = self.shared.forced.load(Ordering::Relaxed);
        tracing::info!(open = open_at_drain, "draining connections");
        self.shared.drain.cancel();
        self.shared.conns.close();
        {
            let all_closed = self.shared.conns.wait();
            let mut all_closed = pin!(all_closed);
            tokio::select! {
                biased;
                () = all_closed.as_mut() => {}
                _ = force_at => {
                    let left = self.open_connections();
                    tracing::warn!(left, "drain deadline: force-closing connections");
                    self.shared.force.cancel();
                    all_closed.await;
                }
            }
        }
        let report = ConnectionReport {
            open_at_drain,
            closed_gracefully: (self.shared.graceful.load(Ordering::Relaxed) - graceful_before)
                as usize,
            forced: (self.shared.forced.load(Ordering::Relaxed) - forced_before) as usize,
        };
        tracing::info!(%report, "connections drained");
        report
    }

    /// The usual drain phase of a server, ready for [`Shutdown::add_phase`]:
    /// starts `drain` (new requests on open connections get refused, every
    /// [`DrainToken`](crate::DrainToken) fires), then [drains](Self::drain)
    /// the connections with the phase's deadline as the force-close moment,
    /// and reports into the [`Outcome`](crate::Outcome): the requests still
    /// in flight at the deadline and the connections force-closed are *cut*,
    /// the connections closed gracefully are *finished*.
    ///
    /// ```no_run
    /// # #[cfg(feature = "hyper")]
    /// # fn demo(handle: palisade_shutdown::server::ServerHandle) -> Result<(), palisade_shutdown::Error> {
    /// use std::time::Duration;
    /// use palisade_shutdown::{Drain, Shutdown};
    ///
    /// let shutdown = Shutdown::new();
    /// let drain = Drain::new(); // the one the service stack's drain layer uses
    /// shutdown.add_phase(handle.drain_phase("drain", Duration::from_secs(30), drain))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Shutdown::add_phase`]: crate::Shutdown::add_phase
    pub fn drain_phase(
        &self,
        name: impl Into<String>,
        deadline: Duration,
        drain: crate::Drain,
    ) -> crate::Phase {
        let connections = self.clone();
        crate::Phase::new(name, deadline).action(move |ctx| async move {
            let in_flight = drain.start();
            tracing::info!(
                connections = connections.open_connections(),
                requests = in_flight,
                deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "stopped accepting, draining in-flight requests"
            );
            let report = connections
                .drain(async {
                    ctx.expired().await;
                    ctx.cut(format!("{} request(s) in flight", drain.in_flight()));
                })
                .await;
            ctx.finished(format!(
                "{} connection(s) closed gracefully",
                report.closed_gracefully
            ));
            if report.forced > 0 {
                ctx.cut(format!("{} connection(s) force-closed", report.forced));
            }
        })
    }

    /// Force-closes every open connection now.
    pub fn force_close(&self) {
        self.shared.force.cancel();
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Connections accepted since the server started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("open", &self.open_connections())
            .field("accepted", &self.accepted())
            .field("accepting", &!self.shared.listener_closed.is_cancelled())
            .finish()
    }
}

/// What [`ServerHandle::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionReport {
    /// Connections open when the drain started.
    pub open_at_drain: usize,
    /// Connections that closed on their own after the drain started (idle
    /// ones at once, busy ones after their last response).
    pub closed_gracefully: usize,
    /// Connections force-closed at the deadline.
    pub forced: usize,
}

impl fmt::Display for ConnectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connection(s) open at drain, {} closed gracefully, {} force-closed",
            self.open_at_drain, self.closed_gracefully, self.forced
        )
    }
}
