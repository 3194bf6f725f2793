//! Serving on N cores: the HTTP builder every serving mode shares, and the
//! thread-per-core mode (`server.runtime = "thread-per-core"`).
//!
//! Two ways to use N cores:
//!
//! - **multi-thread** (the default): one tokio multi-thread runtime with N
//!   workers, one listener; tasks migrate between workers by work stealing.
//! - **thread-per-core** (nginx's worker model): N threads, each with its
//!   own current-thread runtime accepting on its own `SO_REUSEPORT` socket
//!   bound to the same address; the kernel spreads new connections across
//!   them, and a connection stays on the thread that accepted it. Each
//!   worker has its own copy of the stack and so its own upstream
//!   keep-alive pools (an upstream connection is driven by the thread that
//!   uses it), while every policy state — the rate limiter, the breakers,
//!   the drain, the batcher — lives behind the layers' `Arc`s and is shared
//!   by all workers: a global limit of N admits N requests in total, not N
//!   per worker.
//!
//! The coordinator, the signal handlers and the background tasks (demo
//! upstream, batcher, access log) run on the main thread's current-thread
//! runtime. Shutdown drains every worker's connections in one phase with one
//! deadline ([`drain_phase`]); the worker threads stop once the coordinator
//! is done ([`Workers::join`]).
//!
//! `docs/benchmarks.md` has the measurements behind the default.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use futures_util::future::join_all;
use http::{Request, Response};
use hyper::body::Incoming;
use palisade_shutdown::server::{ConnectionLimits, Http, Server, ServerHandle};
use palisade_shutdown::{Drain, Phase};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

use crate::body::Body;
use crate::config::Config;
use crate::stack::ConnectionService;
use crate::telemetry::RequestMetrics;

/// How the gateway uses its `server.workers` cores. The default is
/// thread-per-core: with 2 workers it spent less CPU per request than the
/// multi-thread runtime in every measured round (`scripts/bench-scale.sh`,
/// docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeMode {
    /// One multi-thread runtime, one listener (work stealing).
    MultiThread,
    /// One current-thread runtime per worker, each on its own
    /// `SO_REUSEPORT` listener.
    #[default]
    ThreadPerCore,
}

/// The worker count `server.workers` asks for (0 = the CPUs this process
/// may run on).
pub fn count(config: &Config) -> usize {
    match config.server.workers {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The mode actually run: with one worker both modes are the same single
/// current-thread runtime, served on the main thread (the multi-thread
/// path), so there is no extra thread.
pub fn mode(config: &Config) -> RuntimeMode {
    if count(config) == 1 {
        RuntimeMode::MultiThread
    } else {
        config.server.runtime
    }
}

/// The HTTP/1 + HTTP/2 connection builder every serving mode uses.
pub fn http_builder(config: &Config) -> Http {
    let mut http = Http::new();
    http.http1()
        .header_read_timeout(config.server.header_read_timeout.get())
        // The read buffer bounds the head: hyper answers `431` and closes
        // when a head does not fit. (It also caps the write buffer: a
        // streamed body is flushed at this many queued bytes, not ~400 KiB.)
        .max_buf_size(config.server.max_header_bytes)
        // One flat write buffer per response instead of a writev of head +
        // body chunks: fewer instructions per small response (hyper's queue
        // of buffers), one copy of the body bytes more. docs/benchmarks.md.
        .writev(false);
    if config.server.max_headers != crate::config::DEFAULT_MAX_HEADERS {
        // Only when changed: hyper keeps its 100 parser slots on the stack
        // and moves them to the heap, per request, once this is set.
        http.http1().max_headers(config.server.max_headers);
    }
    if !config.server.http2 {
        return http.http1_only();
    }
    if let Some(h2) = http.http2() {
        // Advertised in SETTINGS; h2 answers a larger header list `431`
        // (its size counts 32 bytes per field besides name and value).
        h2.max_header_list_size(u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(config.server.http2_max_concurrent_streams)
            .keep_alive_interval(config.server.http2_keep_alive_interval.get())
            .keep_alive_timeout(config.server.http2_keep_alive_timeout.get());
    }
    http
}

/// The connection bounds from `[server]` (palisade-shutdown's `Server`).
/// With thread-per-core workers, `max_connections` is split across them
/// (rounded up), so the total stays near the cap.
pub fn connection_limits(config: &Config) -> ConnectionLimits {
    let server = &config.server;
    let workers = match mode(config) {
        RuntimeMode::MultiThread => 1,
        RuntimeMode::ThreadPerCore => count(config),
    };
    ConnectionLimits::new()
        .max_connections(server.max_connections.div_ceil(workers))
        .first_bytes_timeout(server.first_bytes_timeout.get())
        .idle_timeout(server.idle_timeout.get())
}

/// A listening socket with `SO_REUSEPORT`, so every worker can bind the same
/// address and the kernel balances connections across them.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Connections accepted per worker (label `worker`, 0-based): how evenly
/// the kernel spreads connections over the `SO_REUSEPORT` listeners.
pub const WORKER_CONNECTIONS: &str = "gateway_worker_connections_total";

/// The running workers of the thread-per-core mode.
#[derive(Debug)]
pub struct Workers {
    /// Each worker's server, for the shutdown phases.
    pub handles: Vec<ServerHandle>,
    /// The address all workers accept on.
    pub addr: SocketAddr,
    stop: CancellationToken,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Workers {
    /// Binds one `SO_REUSEPORT` listener per stack on `listen` (port 0: the
    /// first picks the port, the others join it) and starts one thread per
    /// listener, serving its connections with that stack on a current-thread
    /// runtime.
    pub fn start<S>(
        listen: SocketAddr,
        stacks: Vec<S>,
        builder: &Http,
        limits: ConnectionLimits,
        metrics: &Arc<RequestMetrics>,
    ) -> io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<Body>, Error: Into<BoxError>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let n = stacks.len();
        let first = reuseport_listener(listen)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(reuseport_listener(addr)?);
        }
        metrics::describe_counter!(
            WORKER_CONNECTIONS,
            "Client connections accepted, by worker (thread-per-core mode)."
        );
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (i, (std_listener, stack)) in listeners.into_iter().zip(stacks).enumerate() {
            let builder = builder.clone();
            let metrics = metrics.clone();
            let accepted = metrics::counter!(WORKER_CONNECTIONS, "worker" => i.to_string());
            let stop = stop.clone();
            let (tx, rx) = mpsc::sync_channel::<io::Result<ServerHandle>>(1);
            let thread = thread::Builder::new()
                .name(format!("gateway-worker-{i}"))
                .spawn(move || {
                    WORKER.set(i);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(std_listener) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                        let server = Server::from_fn(listener, move |peer| {
                            metrics.connection_accepted();
                            accepted.increment(1);
                            ConnectionService::new(stack.clone(), peer)
                        })
                        .with_http(builder)
                        .with_limits(limits);
                        let _ = tx.send(Ok(server.handle()));
                        tokio::spawn(server.run());
                        // Its connections live on this runtime: keep it
                        // running until the shutdown has drained them.
                        stop.cancelled().await;
                    });
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            threads.push(thread);
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other(format!("gateway worker {i} exited at start")))??;
            handles.push(handle);
        }
        tracing::info!(
            workers = n,
            "thread-per-core: one SO_REUSEPORT listener and runtime per worker"
        );
        Ok(Self {
            handles,
            addr,
            stop,
            threads,
        })
    }

    /// Stops every worker runtime (call it after the shutdown has drained
    /// their connections) and waits for the threads.
    pub fn join(self) {
        self.stop.cancel();
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a gateway worker thread panicked");
            }
        }
    }
}

thread_local! {
    /// The thread-per-core worker this thread is (0 on every other thread).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many per-worker copies of thread-affine state (upstream pools) the
/// serving mode wants: one per worker thread-per-core, else one.
pub fn copies(config: &Config) -> usize {
    match mode(config) {
        RuntimeMode::MultiThread => 1,
        RuntimeMode::ThreadPerCore => count(config),
    }
}

/// One `S` per worker (built by [`PerWorker::new`]); each clone serves with
/// the copy of the worker thread it is first used on. The stack is cloned
/// per connection and a connection stays on the worker that accepted it, so
/// a worker's requests use its own copy (its own upstream connections)
/// even when the stack above is shared, as a hot-reloaded generation is.
#[derive(Debug)]
pub struct PerWorker<S> {
    copies: Arc<[S]>,
    chosen: Option<S>,
}

impl<S: Clone> Clone for PerWorker<S> {
    fn clone(&self) -> Self {
        // A clone chooses again, on the thread that uses it.
        Self {
            copies: self.copies.clone(),
            chosen: None,
        }
    }
}

impl<S> PerWorker<S> {
    /// `copies[i]` serves worker `i` (at least one copy).
    pub fn new(copies: Vec<S>) -> Self {
        assert!(!copies.is_empty(), "at least one copy");
        Self {
            copies: copies.into(),
            chosen: None,
        }
    }
}

impl<S: Service<R> + Clone, R> Service<R> for PerWorker<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        let copies = &self.copies;
        self.chosen
            .get_or_insert_with(|| copies[WORKER.get() % copies.len()].clone())
            .poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.chosen
            .as_mut()
            .expect("PerWorker::call before poll_ready")
            .call(req)
    }
}

/// The drain phase over several servers at once, with one deadline for all
/// (what [`ServerHandle::drain_phase`] does for one server).
pub fn drain_phase(handles: Vec<ServerHandle>, deadline: Duration, drain: Drain) -> Phase {
    Phase::new("drain", deadline).action(move |ctx| async move {
        let in_flight = drain.start();
        let open: usize = handles.iter().map(ServerHandle::open_connections).sum();
        tracing::info!(
            connections = open,
            requests = in_flight,
            workers = handles.len(),
            deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            "stopped accepting, draining in-flight requests"
        );
        let force = CancellationToken::new();
        let drains = join_all(
            handles
                .iter()
                .map(|h| h.drain(force.clone().cancelled_owned())),
        );
        let mut drains = pin!(drains);
        let reports = tokio::select! {
            biased;
            reports = drains.as_mut() => reports,
            _ = ctx.expired() => {
                ctx.cut(format!("{} request(s) in flight", drain.in_flight()));
                force.cancel();
                drains.await
            }
        };
        let graceful: usize = reports.iter().map(|r| r.closed_gracefully).sum();
        let forced: usize = reports.iter().map(|r| r.forced).sum();
        ctx.finished(format!("{graceful} connection(s) closed gracefully"));
        if forced > 0 {
            ctx.cut(format!("{forced} connection(s) force-closed"));
        }
    })
}
