//! Forwarding: choosing an upstream ([`ChooseUpstream`]) and sending the
//! request to it over pooled keep-alive connections ([`Proxy`]).
//!
//! The choice is its own step so the per-upstream layers (a circuit breaker
//! keyed by [`Upstream::index`]) can sit between the choice and the
//! forwarding; see `stack.rs`.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::request_body::{ClientBodyError, RequestBody};
use crate::pool::{HostPool, Lease};
use crate::telemetry::UpstreamMetrics;
use hyper::client::conn::http1::SendRequest;

// === ClientInfo ===

/// The forwarding elements for one client address, formatted once per
/// client connection: each connection's copy of [`Proxy`] keeps the last
/// one and reuses it while the peer address (the `SocketAddr` request
/// extension, set per request by the connection) stays the same.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's IP address.
    ip: IpAddr,
    /// `X-Forwarded-For` element for this client.
    x_forwarded_for: HeaderValue,
    /// `Forwarded` element for this client.
    forwarded: HeaderValue,
}

impl ClientInfo {
    /// Info for a client at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let xff =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        // RFC 7239 section 6: IPv6 addresses are bracketed and quoted.
        let fwd = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        let forwarded =
            HeaderValue::from_str(&fwd).expect("a Forwarded element is a valid header value");
        Self {
            ip,
            x_forwarded_for: xff,
            forwarded,
        }
    }
}

// === Upstream ===

/// The upstream chosen for a request, set as a request extension by
/// [`ChooseUpstream`]; [`Proxy`] moves it to the response extensions for the
/// access log (only while the `gateway::access` target is enabled).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Position in the configured upstream list; stable key for
    /// per-upstream state (a circuit breaker per upstream).
    pub index: usize,
    /// `host:port` the request is sent to.
    pub authority: Authority,
}

/// The configured upstreams, shared by every clone of [`ChooseUpstream`].
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    next: AtomicUsize,
}

impl Upstreams {
    /// Upstreams from validated base URIs (`http://host:port`).
    pub fn new(uris: &[Uri]) -> Self {
        let list = uris
            .iter()
            .enumerate()
            .map(|(index, uri)| Upstream {
                index,
                authority: uri
                    .authority()
                    .cloned()
                    .expect("validated upstream has an authority"),
            })
            .collect();
        Self {
            list,
            next: AtomicUsize::new(0),
        }
    }

    /// The upstreams, in configuration order.
    pub fn list(&self) -> &[Upstream] {
        &self.list
    }

    fn pick(&self) -> &Upstream {
        // Round robin; Relaxed is enough, the counter orders nothing else.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.list[n % self.list.len()]
    }
}

/// Layer that applies [`ChooseUpstream`].
#[derive(Debug, Clone)]
pub struct ChooseUpstreamLayer {
    upstreams: Arc<Upstreams>,
    metrics: Arc<UpstreamMetrics>,
}

impl ChooseUpstreamLayer {
    /// Round robin over `upstreams` (must not be empty).
    pub fn new(upstreams: Arc<Upstreams>, metrics: Arc<UpstreamMetrics>) -> Self {
        assert!(!upstreams.list.is_empty(), "at least one upstream");
        Self { upstreams, metrics }
    }
}

impl<S> Layer<S> for ChooseUpstreamLayer {
    type Service = ChooseUpstream<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChooseUpstream {
            inner,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Picks the upstream (round robin) and records it as the [`Upstream`]
/// request extension; counts and logs upstream failures of the layers below.
#[derive(Debug, Clone)]
pub struct ChooseUpstream<S> {
    inner: S,
    upstreams: Arc<Upstreams>,
    metrics: Arc<UpstreamMetrics>,
}

impl<S, B> Service<Request<B>> for ChooseUpstream<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ChooseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let upstream = self.upstreams.pick();
        let index = upstream.index;
        req.extensions_mut().insert(upstream.clone());
        ChooseFuture {
            inner: self.inner.call(req),
            index,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`ChooseUpstream`].
    #[derive(Debug)]
    pub struct ChooseFuture<F> {
        #[pin]
        inner: F,
        index: usize,
        upstreams: Arc<Upstreams>,
        metrics: Arc<UpstreamMetrics>,
    }
}

impl<F, T, E> Future for ChooseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(res) => Poll::Ready(Ok(res)),
            Err(e) => {
                let e = e.into();
                if let Some(kind) = UpstreamErrorKind::of(&*e) {
                    this.metrics.record(*this.index, kind);
                    let upstream = &this.upstreams.list[*this.index].authority;
                    tracing::warn!(%upstream, kind = kind.as_str(), error = %ErrorChain(&*e), "upstream request failed");
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

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
                ProxyError::Client(_) | ProxyError::NoUpstream => None,
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
    /// No [`Upstream`] extension: `ChooseUpstream` is missing from the stack.
    NoUpstream,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("upstream connect failed"),
            Self::Upstream(_) => f.write_str("upstream request failed"),
            Self::Client(_) => f.write_str("client request body failed"),
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
            Self::NoUpstream => None,
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
    /// The forwarding elements of the last client seen. The stack is cloned
    /// per connection, so this is the connection's peer: formatted on its
    /// first request, reused by the rest (no per-request extension for it).
    client: Option<ClientInfo>,
}

impl Proxy {
    /// A proxy with one keep-alive pool per upstream, configured from
    /// `[upstream]`.
    pub fn new(upstreams: &Upstreams, config: &UpstreamConfig) -> Self {
        let pools = upstreams
            .list()
            .iter()
            .map(|u| Arc::new(HostPool::new(&u.authority, config)))
            .collect();
        Self {
            pools,
            client: None,
        }
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
                    Box::pin(send_fresh(pool, upstream, retry)).await
                })
            }
            None => Box::pin(send_fresh(pool, upstream, req)),
        };
        ProxyFuture { inner }
    }
}

/// Sends `req` on a new connection.
async fn send_fresh(
    pool: Arc<HostPool>,
    upstream: Upstream,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ProxyError> {
    let mut sender = pool.connect().await?;
    let res = sender.send_request(req).await.map_err(upstream_error)?;
    Ok(finish(res, sender, pool, upstream))
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

/// Rewrites the request in place for `upstream`.
fn prepare_request(req: &mut Request<RequestBody>, upstream: &Upstream, client: Option<ClientInfo>) {
    // The upstream keeps seeing the name the client used. An h2 client sends
    // no Host header, only the URI authority; keep that as Host, as an h1
    // client would have sent it.
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().unwrap_or(&upstream.authority);
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    // Origin form (`/path?query`) on the wire to the upstream.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    // The upstream side always speaks HTTP/1.1, whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    if let Some(info) = client {
        append_list(headers, X_FORWARDED_FOR, info.x_forwarded_for);
        append_list(headers, header::FORWARDED, info.forwarded);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends `element` to the comma-separated list `name`, joining existing
/// field lines into one (some upstreams read only the first line).
fn append_list(headers: &mut HeaderMap, name: HeaderName, element: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(element);
        }
        header::Entry::Occupied(mut o) => {
            let mut joined = Vec::with_capacity(64);
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(element.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    o.insert(v);
                }
                // Unreachable in practice (joined valid values stay valid);
                // fall back to a second field line.
                Err(_) => o.append(element),
            }
        }
    }
}

/// The hop-by-hop fields of RFC 9110 section 7.6.1 (plus `Proxy-Connection`,
/// which old clients send): they describe one connection and must not be
/// forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including every field named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: one pass over the (few) fields, comparing names, instead of
    // a hashed lookup per hop-by-hop name; most messages carry none.
    let any = headers
        .keys()
        .any(|k| k == header::CONNECTION || HOP_BY_HOP.contains(k));
    if !any {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        // `remove` drops every `Connection` field line.
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
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
