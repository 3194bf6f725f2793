//! Forwarding ([`Proxy`]): sends the request to the upstream chosen by
//! layer 6 (`balance.rs`) over pooled keep-alive connections (`pool.rs`),
//! after the header rewriting of `headers.rs`; and the error taxonomy of
//! forwarding ([`ProxyError`], [`UpstreamErrorKind`]).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::SendRequest;
use pin_project_lite::pin_project;
use tower::Service;

pub use crate::balance::{ChooseUpstreamLayer, Upstream, Upstreams};
use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::failover::{FailedOver, Failover, Replay, Why};
pub use crate::headers::remove_hop_by_hop;
use crate::headers::{ClientInfo, prepare_request};
use crate::pool::{HostPool, Lease};
use crate::request_body::{ClientBodyError, RequestBody};

/// What went wrong talking to an upstream (the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be opened.
    Connect,
    /// No response head within `upstream.timeout`.
    Timeout,
    /// The connection failed mid-request or the response was malformed.
    Protocol,
}

impl UpstreamErrorKind {
    /// All kinds, in metric-table order.
    pub const ALL: [Self; 3] = [Self::Connect, Self::Timeout, Self::Protocol];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }

    /// Classifies an error from the forwarding layers; `None` for errors that
    /// are not the upstream's fault (a rejection by a policy layer).
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if e.is::<tower::timeout::error::Elapsed>() {
            Some(Self::Timeout)
        } else if let Some(p) = e.downcast_ref::<ProxyError>() {
            match p {
                ProxyError::Connect(_) => Some(Self::Connect),
                ProxyError::Upstream(_) => Some(Self::Protocol),
                ProxyError::Client(_) | ProxyError::PoolExhausted | ProxyError::NoUpstream => None,
            }
        } else {
            None
        }
    }
}

/// Displays an error and its sources on one line (for logs only; responses
/// never carry error details).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

// === Proxy ===

/// Why forwarding failed.
#[derive(Debug)]
pub enum ProxyError {
    /// Could not connect to the upstream (refused, unreachable, connect
    /// timeout).
    Connect(std::io::Error),
    /// The upstream connection failed after connecting.
    Upstream(hyper::Error),
    /// The client's request body failed (too large, stalled, aborted): the
    /// client's fault, never counted against the upstream.
    Client(ClientBodyError),
    /// The upstream had `upstream.pool_max_connections` open for all of
    /// `upstream.pool_wait_timeout` (`pool.rs`): 503, not the upstream's
    /// failure.
    PoolExhausted,
    /// No [`Upstream`] extension: `ChooseUpstream` is missing from the stack.
    NoUpstream,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("upstream connect failed"),
            Self::Upstream(_) => f.write_str("upstream request failed"),
            Self::Client(_) => f.write_str("client request body failed"),
            Self::PoolExhausted => f.write_str("no upstream connection free in time"),
            Self::NoUpstream => f.write_str("no upstream chosen for the request"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Upstream(e) => Some(e),
            Self::Client(e) => Some(e),
            Self::PoolExhausted | Self::NoUpstream => None,
        }
    }
}

/// The forwarding service: rewrites the request for the upstream named by the
/// [`Upstream`] extension and streams both bodies over a pooled keep-alive
/// connection (see `pool.rs`).
#[derive(Debug, Clone)]
pub struct Proxy {
    /// One pool per upstream, indexed by [`Upstream::index`].
    pools: Arc<[Arc<HostPool>]>,
    /// Where a request goes when its upstream refuses the connection.
    failover: Option<Arc<Failover>>,
    /// The forwarding elements of the last client seen. The stack is cloned
    /// per connection, so this is the connection's peer: formatted on its
    /// first request, reused by the rest (no per-request extension for it).
    client: Option<ClientInfo>,
}

impl Proxy {
    /// The proxy's pools, one per upstream in index order (what a
    /// [`Failover`] retries on).
    pub fn pools(&self) -> Arc<[Arc<HostPool>]> {
        self.pools.clone()
    }

    /// A proxy with one keep-alive pool per upstream, configured from
    /// `[upstream]`, one of `share` proxies to the same upstreams (a
    /// thread-per-core worker's: each may open its share of
    /// `upstream.pool_max_connections`).
    pub fn new(upstreams: &Upstreams, config: &UpstreamConfig, share: usize) -> Self {
        let pools = upstreams
            .list()
            .iter()
            .map(|u| Arc::new(HostPool::new(&u.authority, config, share)))
            .collect();
        Self {
            pools,
            failover: None,
            client: None,
        }
    }

    /// The gateway's proxy: one pool per upstream and, after a refused
    /// connect, a failover to the next upstream its breaker admits, within
    /// the `[upstream]` retry budget. Start-up and every reload build it so.
    pub fn with_retries(
        upstreams: &Arc<Upstreams>,
        breakers: &[palisade::breaker::Breaker],
        classifier: crate::breaker::UpstreamClassifier,
        metrics: &Arc<crate::telemetry::UpstreamMetrics>,
        config: &UpstreamConfig,
    ) -> Self {
        let proxy = Self::new(upstreams, config, 1);
        let failover = Failover::new(
            upstreams.clone(),
            proxy.pools(),
            breakers.to_vec(),
            classifier,
            metrics.clone(),
            config,
        );
        proxy.with_failover(Arc::new(failover))
    }

    /// A copy with its own keep-alive pools (a thread-per-core worker drives
    /// its own upstream connections; one of `share`) and the same failover
    /// budget and breakers.
    pub fn with_own_pools(
        &self,
        upstreams: &Upstreams,
        config: &UpstreamConfig,
        share: usize,
    ) -> Self {
        let mut proxy = Self::new(upstreams, config, share);
        proxy.failover = self
            .failover
            .as_ref()
            .map(|f| Arc::new(f.with_pools(proxy.pools())));
        proxy
    }

    /// Retries a request on another upstream after a connect error
    /// (`failover.rs`).
    pub fn with_failover(mut self, failover: Arc<Failover>) -> Self {
        self.failover = Some(failover);
        self
    }

    /// The forwarding elements for the request's peer, if it has one.
    fn client_info(&mut self, req: &Request<RequestBody>) -> Option<ClientInfo> {
        let ip = req.extensions().get::<SocketAddr>()?.ip();
        match &self.client {
            Some(info) if info.ip == ip => Some(info.clone()),
            _ => Some(self.client.insert(ClientInfo::new(ip)).clone()),
        }
    }
}

impl Service<Request<RequestBody>> for Proxy {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // The pools have no bound to wait for; limits are the layers' job.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let upstream = req.extensions_mut().remove::<Upstream>();
        let Some((upstream, pool)) = upstream.and_then(|u| {
            let pool = self.pools.get(u.index)?.clone();
            Some((u, pool))
        }) else {
            return ProxyFuture {
                inner: Box::pin(std::future::ready(Err(ProxyError::NoUpstream))),
            };
        };
        let client = self.client_info(&req);
        prepare_request(&mut req, &upstream, client);
        let failover = self.failover.clone();
        // An idempotent request without a body may be sent again after it
        // was sent (failover.rs); only then is its head copied.
        if let Some(failover) = failover.as_ref().filter(|f| f.retries_idempotent())
            && let Some(replay) = Replay::of(&req)
        {
            let failover = failover.clone();
            let inner: Pin<Box<dyn Future<Output = _> + Send>> = match pool.try_checkout() {
                // As below, the idle connection takes the request here; the
                // future only awaits its answer and keeps the copy.
                Some(mut sender) => {
                    let sent = sender.try_send_request(req);
                    Box::pin(Replayable::Sent {
                        sent,
                        rest: Some(SentRest {
                            sender,
                            pool,
                            upstream,
                            replay,
                            failover,
                        }),
                    })
                }
                None => Box::pin(async move {
                    let first = Box::pin(send_fresh(
                        pool,
                        upstream.clone(),
                        req,
                        Some(failover.clone()),
                    ))
                    .await;
                    retry_elsewhere(first, upstream, replay, failover).await
                }),
            };
            return ProxyFuture { inner };
        }
        // The future is boxed (hyper's send future has no nameable type), so
        // keep it small: the common case, an idle connection ready now,
        // queues the request here and the future only awaits the response.
        // Opening a connection is the slow path, boxed on its own. (A future
        // over 1 KiB also made every request a large allocation, which costs
        // glibc a fastbin consolidation each time.)
        let inner: Pin<Box<dyn Future<Output = _> + Send>> = match pool.try_checkout() {
            Some(mut sender) => {
                let sent = sender.try_send_request(req);
                Box::pin(async move {
                    let retry = match sent.await {
                        Ok(res) => return Ok(finish(res, sender, pool, upstream)),
                        Err(mut e) => match e.take_message() {
                            Some(req) => req,
                            None => return Err(upstream_error(e.into_error())),
                        },
                    };
                    // Never written: the pooled connection closed under us.
                    // Retrying on a fresh one is safe.
                    Box::pin(send_fresh(pool, upstream, retry, failover)).await
                })
            }
            None => Box::pin(send_fresh(pool, upstream, req, failover)),
        };
        ProxyFuture { inner }
    }
}

/// Sends `req` on a new connection; when the upstream refuses it, on
/// another upstream if `failover` finds one (nothing was sent yet).
async fn send_fresh(
    pool: Arc<HostPool>,
    upstream: Upstream,
    req: Request<RequestBody>,
    failover: Option<Arc<Failover>>,
) -> Result<Response<Body>, ProxyError> {
    let mut sender = match pool.open().await {
        Ok(sender) => sender,
        Err(e @ ProxyError::Connect(_)) => {
            let Some(alt) = failover.and_then(|f| {
                f.alternative(upstream.index, Why::Failed(UpstreamErrorKind::Connect))
            }) else {
                return Err(e);
            };
            let failed = upstream.index;
            let result = Box::pin(send_to(alt.pool, alt.upstream, req)).await;
            alt.permit.record(alt.classifier.classify_proxied(&result));
            let mut res = result?;
            res.extensions_mut().insert(FailedOver(failed));
            return Ok(res);
        }
        Err(e) => return Err(e),
    };
    let res = sender.send_request(req).await.map_err(upstream_error)?;
    Ok(finish(res, sender, pool, upstream))
}

/// Sends `req` to `upstream`, on a pooled connection if one is ready.
async fn send_to(
    pool: Arc<HostPool>,
    upstream: Upstream,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ProxyError> {
    let mut sender = match pool.try_checkout() {
        Some(sender) => sender,
        None => pool.open().await?,
    };
    let res = sender.send_request(req).await.map_err(upstream_error)?;
    Ok(finish(res, sender, pool, upstream))
}

pin_project! {
    /// An idempotent request without a body ([`Replay`]) queued on an idle
    /// connection, sent at most twice more: once on a fresh connection when
    /// the reused one failed before any response byte (the upstream may have
    /// been closing it as the request was written, the race every keep-alive
    /// client meets), and once on another upstream after a connection
    /// failure or an answer in `upstream.retry_statuses`, within the budget
    /// (`failover.rs`).
    ///
    /// Written out rather than an `async fn`, whose state kept the request,
    /// the copy and the answer apart and came to 1.7 KiB: over glibc's
    /// per-thread cache, so every request paid a slower allocation. The
    /// answer awaited here is the common case; every retry is boxed on its
    /// own.
    #[project = ReplayableProj]
    enum Replayable<F> {
        Sent {
            #[pin]
            sent: F,
            rest: Option<SentRest>,
        },
        Retrying {
            retry: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>,
        },
    }
}

/// What [`Replayable::Sent`] needs once its answer (or failure) is in.
struct SentRest {
    sender: SendRequest<RequestBody>,
    pool: Arc<HostPool>,
    upstream: Upstream,
    replay: Replay,
    failover: Arc<Failover>,
}

impl<F> Future for Replayable<F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let retry: Pin<Box<dyn Future<Output = _> + Send>> = match self.as_mut().project() {
            ReplayableProj::Retrying { retry } => return retry.as_mut().poll(cx),
            ReplayableProj::Sent { sent, rest } => {
                let result = ready!(sent.poll(cx));
                let SentRest {
                    sender,
                    pool,
                    upstream,
                    replay,
                    failover,
                } = rest.take().expect("Replayable polled after completion");
                match result {
                    Ok(res) if !failover.retries_status(res.status()) => {
                        return Poll::Ready(Ok(finish(res, sender, pool, upstream)));
                    }
                    Ok(res) => {
                        let res = finish(res, sender, pool, upstream.clone());
                        Box::pin(retry_elsewhere(Ok(res), upstream, replay, failover))
                    }
                    Err(e) => Box::pin(async move {
                        let first =
                            resend_fresh(pool, upstream.clone(), e, &replay, &failover).await;
                        retry_elsewhere(first, upstream, replay, failover).await
                    }),
                }
            }
        };
        self.set(Replayable::Retrying { retry });
        self.poll(cx)
    }
}

/// The first answer, or the [`Replay`] sent to another upstream when the
/// first failed before its head or answered with a status to retry.
async fn retry_elsewhere(
    first: Result<Response<Body>, ProxyError>,
    upstream: Upstream,
    replay: Replay,
    failover: Arc<Failover>,
) -> Result<Response<Body>, ProxyError> {
    let why = match &first {
        // Already sent elsewhere after a refused connect: one retry at most.
        Ok(res) if res.extensions().get::<FailedOver>().is_some() => return first,
        Ok(res) if failover.retries_status(res.status()) => Why::Status,
        Err(ProxyError::Upstream(_)) => Why::Failed(UpstreamErrorKind::Protocol),
        _ => return first,
    };
    let Some(alt) = failover.alternative(upstream.index, why) else {
        return first;
    };
    // The first answer is dropped unread (its connection closes with it).
    drop(first);
    let result = Box::pin(send_to(alt.pool, alt.upstream, replay.request())).await;
    alt.permit.record(alt.classifier.classify_proxied(&result));
    let mut res = result?;
    res.extensions_mut().insert(FailedOver(upstream.index));
    Ok(res)
}

/// A reused connection failed `req` (`e`): send it on a fresh one, the
/// request itself if it was never written, else its [`Replay`].
async fn resend_fresh(
    pool: Arc<HostPool>,
    upstream: Upstream,
    mut e: TrySendError<Request<RequestBody>>,
    replay: &Replay,
    failover: &Arc<Failover>,
) -> Result<Response<Body>, ProxyError> {
    let (req, why) = match e.take_message() {
        Some(req) => (req, "closed before the request was written"),
        None => (replay.request(), "failed before the response head"),
    };
    tracing::debug!(upstream = %upstream.authority, error = %e.error(), "reused upstream connection {why}; sending on a fresh one");
    send_fresh(pool, upstream, req, Some(failover.clone())).await
}

/// A failed exchange is the client's when its request body failed (hyper
/// reports that as its own error with ours as the source).
fn upstream_error(e: hyper::Error) -> ProxyError {
    match ClientBodyError::find(&e) {
        Some(client) => ProxyError::Client(client),
        None => ProxyError::Upstream(e),
    }
}

/// The client-bound response: hop-by-hop fields removed, the upstream
/// recorded, the connection leased to the body.
fn finish(
    res: Response<Incoming>,
    sender: SendRequest<RequestBody>,
    pool: Arc<HostPool>,
    upstream: Upstream,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    // Only the access log reads it back; skip the extension map (two
    // allocations) when that log is off.
    if tracing::enabled!(target: crate::telemetry::ACCESS_TARGET, tracing::Level::INFO) {
        parts.extensions.insert(upstream);
    }
    Response::from_parts(parts, Body::upstream(body, Lease::new(sender, pool)))
}

/// Response future of [`Proxy`]. Boxed: hyper's `send_request` future has
/// no nameable type (one allocation per request; the legacy client boxed
/// too).
pub struct ProxyFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>,
}

impl fmt::Debug for ProxyFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyFuture").finish_non_exhaustive()
    }
}

impl Future for ProxyFuture {
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
