//! THE stack: every layer of the gateway, in order. Read this file to see how
//! palisade layers compose with each other and with tower's own.
//!
//! A request travels top to bottom, the response bottom to top:
//!
//! ```text
//!  client
//!    │
//!  1 TelemetryLayer       access log, request count + latency, in-flight
//!  1a EdgeLayer           CONNECT/TRACE 405, bad Host 400, head over budget
//!                         431: never forwarded (edge.rs)
//!  2 BuiltinRoutesLayer   /healthz /readyz /metrics /demo/faults answered here
//!                         (the admin ones on server.admin_listen if set)
//!  2a reload              [reload] admin: POST /admin/reload; then the newest
//!                         generation of layers 3-9 (hot-swapped, reload.rs)
//!  3 ErrorResponseLayer   any error below becomes a short HTTP response
//!  3a InFlightLimitLayer  server.max_in_flight: 503 + Retry-After when full
//!  3b AdaptiveLimitLayer  [limit] global (off by default): one adaptive
//!                         limit over all proxied requests; deadlines
//!  4 DrainLayer           shutdown: counts requests in flight, 503 once draining
//!  5 ratelimit::layer     per-client and global limits, 429 + Retry-After
//!  5a ScatterLayer       [scatter] route: every upstream at once, JSON
//!  5b ItemsRouteLayer     [batch]: GET /items/{id} coalesced into /items?ids=
//!  5c HedgeLayer          [hedge]: idempotent requests hedged across upstreams
//!  6 ChooseUpstreamLayer  p2c on pending requests, then the first upstream
//!                         whose adaptive limit has room and whose breaker
//!                         admits the call (one of each per upstream); 503
//!                         + Retry-After when none does
//!  8 UpstreamTimeoutLayer body cap 413 + body stall 408; upstream.timeout 504
//!  9 Proxy                forwards over pooled keep-alive connections (a cap
//!                         per upstream); retries within a budget (failover.rs)
//!    │
//!  upstream
//! ```
//!
//! Why this order:
//! - Telemetry is outermost so its numbers are what clients saw: 429s, 503s,
//!   504s and built-in routes are all counted, with the final status.
//! - The edge checks right below telemetry (refusals are counted with their
//!   status) and above everything else: a request the gateway will never
//!   forward (a CONNECT tunnel, a missing or ambiguous `Host`, an
//!   oversized head) costs nothing more.
//! - Built-in routes come before every policy layer: probes and `/metrics`
//!   must answer while the limiter rejects or the breaker is open, and a
//!   `/healthz` must not spend a rate-limit token.
//! - Error mapping sits right below the routes so every policy layer may
//!   simply fail with its typed error; one place turns errors into responses
//!   (and the telemetry above sees a status, never an error).
//! - The in-flight cap right below the error mapping and above everything
//!   else: a shed request costs no rate-limit cell, no upstream choice and
//!   no breaker permit, and probes (answered above it) are never shed.
//! - Shutdown before rate limiting: a draining gateway rejects new work
//!   without charging the client's budget.
//! - Rate limiting before the upstream choice: a rejected request never
//!   touches per-upstream state.
//! - Scatter and hedging right below the limiter: a scatter or a hedged
//!   request spends one rate-limit cell however many upstream calls it
//!   makes (the hedge budget bounds those), and they pick their upstreams
//!   themselves, so they sit above the single-upstream choice.
//! - Batching right after rate limiting, before hedging (a lookup joins a
//!   batch rather than being hedged alone): each client's lookup spends its
//!   own cell before it joins a batch; the batcher then calls the upstream
//!   through its own choice + breaker + timeout (`batch.rs`), so the breaker
//!   sees one outcome per batch, the call the upstream really served.
//! - The adaptive limits are part of the choice (`balance.rs`, `limit.rs`):
//!   a limit protects its upstream from queueing, so it must know which
//!   upstream a request goes to, and a full one takes its upstream out of
//!   the rotation like an open breaker, so p2c's choice moves to an
//!   upstream with room. A refusal costs no upstream call and no breaker
//!   permit, and arrives in microseconds: under overload the excess is
//!   answered at once instead of queueing past its client's deadline.
//!   `server.max_in_flight` (3a) stays the hard memory cap above it.
//! - The breakers are part of the choice (`balance.rs`): an open breaker
//!   takes its upstream out of the rotation instead of answering 503 for
//!   its share of the traffic, and they wrap the timeout, so a timeout
//!   counts as a failure.
//! - The timeout is innermost so it measures the upstream alone, not time
//!   spent queued in the layers above; and it starts only once the request
//!   body is uploaded, so a slow client is the body timeout's 408 (its own
//!   error, `Ignored` by the breaker above), never a 504 charged to the
//!   upstream.
//!
//! Around the stack, per connection (`main.rs`, palisade-shutdown's
//! `Server`): `server.max_connections`, `server.first_bytes_timeout`,
//! `server.idle_timeout`, hyper's `header_read_timeout` and the HTTP/2
//! stream cap and keep-alive pings.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use palisade::http::Protocol;
use palisade_core::grpc;

use crate::batch::ItemsRouteLayer;
use crate::body::Body;
use crate::config::Config;
use crate::edge::EdgeLayer;
use crate::proxy::{ChooseUpstreamLayer, ErrorChain, Proxy, ProxyError, Upstreams};
use crate::request_body::ClientBodyError;
use crate::routes::BuiltinRoutesLayer;
use crate::shed::{InFlightLimitLayer, Overloaded};
use crate::switch::LayerName;
use crate::telemetry::{TelemetryLayer, UpstreamMetrics};
use crate::upstream_timeout::UpstreamTimeoutLayer;

/// The parts of the stack built once at start-up and kept by every
/// generation: layers 1-2, the in-flight slots, the drain and the batcher.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// Layer 1.
    pub telemetry: TelemetryLayer,
    /// Layer 1a: method, `Host` and head-budget checks (`edge.rs`).
    pub edge: EdgeLayer,
    /// Layer 2.
    pub routes: BuiltinRoutesLayer,
    /// Layer 3a: its slots are shared by every connection.
    pub in_flight: InFlightLimitLayer,
    /// Layer 4's handle: the shutdown's drain phase starts it.
    pub drain: palisade_shutdown::Drain,
    /// Layer 5b's batcher, when `[batch]` is on.
    pub items: Option<crate::batch::Items>,
}

/// What one generation of the stack is built from: the [`Fixed`] parts
/// and those built from its configuration (`reload::generation`, the one
/// place that builds them, at start-up and on every reload).
#[derive(Debug)]
pub struct Shared {
    /// The parts every generation shares.
    pub fixed: Fixed,
    /// The validated configuration.
    pub config: Config,
    /// The upstreams layer 6 chooses from.
    pub upstreams: Arc<Upstreams>,
    /// Upstream error counters layer 6 records into.
    pub upstream_metrics: Arc<UpstreamMetrics>,
    /// Layer 5, built (and so validated) before any port is bound.
    pub ratelimit: crate::ratelimit::RateLimitLayer,
    /// Layer 6's breakers, one per upstream (index order).
    pub breakers: Vec<palisade::breaker::Breaker>,
    /// Layer 6's adaptive concurrency limits, one per upstream (index
    /// order); `None` when `[limit]` is off.
    pub limits: Option<Vec<palisade::limit::Limiter>>,
    /// Layer 3b: the global adaptive limit (`[limit] global`).
    pub global_limit: Option<palisade::limit::Limiter>,
    /// How layer 6 classifies a call for its breaker.
    pub classifier: crate::breaker::UpstreamClassifier,
    /// Layer 9, with its pools and its failover to another upstream.
    pub proxy: Proxy,
    /// Layer 5a (a pass-through without `[scatter] path`).
    pub scatter: crate::scatter::ScatterLayer,
    /// Layer 5c (a pass-through unless `[hedge] enabled`).
    pub hedge: crate::hedge::HedgeLayer,
}

// === hook: hot reload (reload.rs) ===
// The stack is cloned per connection (every layer's state sits behind an
// `Arc`, so clones share one limiter, one breaker per upstream), and split
// where the hot-reloadable part starts: layers 1-2 (`outer`) are built once; layers 3-9 (`proxied`) are rebuilt from each
// new configuration and swapped under them, so a request in flight finishes
// on the stack it started on.

/// Layers 1-2 over `inner` (the proxied stack, or the reloadable service
/// that routes to its newest generation).
pub fn outer<S>(
    fixed: &Fixed,
    layers: &crate::switch::StackConfig,
    inner: S,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
>
+ Clone
+ Send
+ Sync
+ 'static
+ use<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // `[stack] layers` (switch.rs) may leave optional layers out, for
    // per-layer benchmarks; by default every layer is built.
    ServiceBuilder::new()
        .layer(layers.switch(LayerName::Telemetry, fixed.telemetry.clone()))
        // Always built, like the error mapping: a safety check, not a
        // pattern to benchmark alone.
        .layer(fixed.edge.clone())
        .layer(layers.switch(LayerName::Routes, fixed.routes.clone()))
        .service(inner)
}

/// Layers 3-9, built from one configuration.
pub fn proxied(
    shared: &Shared,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
>
+ Clone
+ Send
+ Sync
+ 'static
+ use<> {
    let config = &shared.config;
    // `[stack] layers` (switch.rs) may leave optional layers out, for
    // per-layer benchmarks; by default every layer is built.
    let layers = &config.stack;
    // The breakers are part of the upstream choice (an open breaker leaves
    // the rotation); left out, the choice is plain round robin.
    let mut choose =
        ChooseUpstreamLayer::new(shared.upstreams.clone(), shared.upstream_metrics.clone());
    if layers.has(LayerName::Breaker) {
        choose = choose.with_breakers(shared.breakers.clone(), shared.classifier);
    }
    // The limits are part of the choice too: a full limit skips its
    // upstream; when every upstream is full, 503 before any upstream call.
    if let Some(limits) = &shared.limits {
        choose = choose.with_limits(limits.clone());
    }
    // One set of upstream pools per thread-per-core worker (a connection is
    // driven by the worker that uses it); the retry budget and breakers
    // are shared.
    let copies = crate::workers::copies(config);
    let proxy = crate::workers::PerWorker::new(
        (0..copies)
            .map(|_| {
                shared
                    .proxy
                    .with_own_pools(&shared.upstreams, &config.upstream, copies)
            })
            .collect(),
    );
    ServiceBuilder::new()
        .layer(ErrorResponseLayer)
        .layer(layers.switch(LayerName::Shed, shared.fixed.in_flight.clone()))
        .option_layer(
            shared
                .global_limit
                .clone()
                .map(|limiter| crate::limit::global_layer(limiter, &config.limit)),
        )
        .layer(layers.switch(LayerName::Drain, shared.fixed.drain.layer()))
        .layer(layers.switch(LayerName::Ratelimit, shared.ratelimit.clone()))
        .layer(layers.switch(LayerName::Scatter, shared.scatter.clone()))
        .layer(layers.switch(
            LayerName::Batch,
            ItemsRouteLayer::new(shared.fixed.items.as_ref().map(|items| items.batch.clone())),
        ))
        .layer(layers.switch(LayerName::Hedge, shared.hedge.clone()))
        .layer(choose)
        .layer(UpstreamTimeoutLayer::new(config))
        .service(proxy)
}

// === errors → responses ===

/// The response for an error from the layers below [`ErrorResponseLayer`].
/// Bodies are short and fixed: details go to the log, never to the client.
///
/// Every palisade error (an open breaker's 503, a draining server's 503 with
/// `Connection: close`, a rate limit's 429) is mapped by
/// `palisade::http::error_response`; the gateway only adds its short body.
/// A gRPC request (`content-type: application/grpc...`) gets a trailers-only
/// gRPC status instead: palisade's rejections their own codes
/// (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`), the gateway's errors the code of
/// their HTTP status (`Code::from_http_status`: 502/503/504 `UNAVAILABLE`).
pub fn error_response(err: &BoxError, protocol: Protocol) -> Response<Body> {
    if let Some(mut res) = palisade::http::error_response::<Body>(err, protocol) {
        if protocol == Protocol::Grpc {
            return res;
        }
        let body = match res.status() {
            StatusCode::TOO_MANY_REQUESTS => "too many requests\n",
            StatusCode::SERVICE_UNAVAILABLE if res.headers().contains_key(header::CONNECTION) => {
                "draining\n"
            }
            StatusCode::SERVICE_UNAVAILABLE => "service unavailable\n",
            _ => "internal error\n",
        };
        *res.body_mut() = Body::from(body);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return res;
    }
    // Not a palisade error: the gateway's own, possibly wrapped (a failed
    // batch carries its upstream call's error as its source).
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    let mut answer = None;
    while let Some(e) = current {
        answer = if let Some(c) = e.downcast_ref::<ClientBodyError>() {
            Some((c.status(), c.message()))
        } else if e.is::<Overloaded>() {
            return busy(protocol, "overloaded");
        } else if matches!(
            e.downcast_ref::<ProxyError>(),
            Some(ProxyError::PoolExhausted)
        ) {
            return busy(protocol, "upstream busy");
        } else if e.is::<tower::timeout::error::Elapsed>() {
            Some((StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n"))
        } else if e.is::<crate::batch::FetchError>() || e.is::<hyper_util::client::legacy::Error>()
        {
            Some((StatusCode::BAD_GATEWAY, "bad gateway\n"))
        } else if let Some(p) = e.downcast_ref::<ProxyError>() {
            Some(match p {
                ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                    (StatusCode::BAD_GATEWAY, "bad gateway\n")
                }
                ProxyError::Client(c) => (c.status(), c.message()),
                ProxyError::NoUpstream | ProxyError::PoolExhausted => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            })
        } else {
            None
        };
        if answer.is_some() {
            break;
        }
        current = e.source();
    }
    let (status, body) = answer.unwrap_or_else(|| {
        tracing::error!(error = %ErrorChain(&**err), "unexpected error in the gateway stack");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
    });
    if protocol == Protocol::Grpc {
        return grpc::trailers_only(grpc::Code::from_http_status(status), body.trim_end(), None);
    }
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Turns the errors of the layers below into responses with
/// [`error_response`], so the service hyper sees never fails (a failed
/// service would make hyper drop the connection).
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse {
            inner,
            failed: None,
        }
    }
}

/// See [`ErrorResponseLayer`].
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    /// An error the inner service reported from `poll_ready`, answered by the
    /// next `call` (readiness errors have no request to answer otherwise).
    failed: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        // A clone starts without the readiness outcome of the original.
        Self {
            inner: self.inner.clone(),
            failed: None,
        }
    }
}

impl<S, B> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_none()
            && let Err(e) = ready!(self.inner.poll_ready(cx))
        {
            self.failed = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let protocol = Protocol::of(req.headers());
        match self.failed.take() {
            Some(e) => ErrorResponseFuture::Failed {
                res: Some(error_response(&e, protocol)),
            },
            None => ErrorResponseFuture::Inner {
                inner: self.inner.call(req),
                protocol,
            },
        }
    }
}

/// `503` with `Retry-After: 1` (gRPC: `UNAVAILABLE` with a 1 s pushback):
/// the gateway itself has no room right now (the in-flight cap, an
/// upstream's connection cap), so the client may come back in a moment.
fn busy(protocol: Protocol, message: &'static str) -> Response<Body> {
    let after = std::time::Duration::from_secs(1);
    if protocol == Protocol::Grpc {
        return grpc::trailers_only(grpc::Code::Unavailable, message, Some(after));
    }
    let mut res = Response::new(Body::from(format!("{message}\n")));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(palisade_core::retry_after_secs(after)),
    );
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pin_project! {
    /// Response future of [`ErrorResponse`].
    #[project = ErrorResponseProj]
    #[derive(Debug)]
    pub enum ErrorResponseFuture<F> {
        /// Waiting for the inner service.
        Inner { #[pin] inner: F, protocol: Protocol },
        /// Answering a readiness error.
        Failed { res: Option<Response<Body>> },
    }
}

impl<F, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ErrorResponseProj::Inner { inner, protocol } => {
                Poll::Ready(Ok(match ready!(inner.poll(cx)) {
                    Ok(res) => res,
                    Err(e) => error_response(&e.into(), *protocol),
                }))
            }
            ErrorResponseProj::Failed { res } => Poll::Ready(Ok(res
                .take()
                .expect("ErrorResponseFuture polled after completion"))),
        }
    }
}

// === per connection ===

/// The hyper service for one client connection: attaches the connection's
/// peer `SocketAddr` to each request, then runs it on the stack.
///
/// hyper calls through `&self`, one request at a time per connection, so the
/// connection keeps its own copy of the stack in a `RefCell` and calls it
/// directly when it is ready at once (always, unless a layer applies
/// backpressure): no clone of the whole stack per request. A stack that is
/// not ready at once is cloned and driven to readiness by the request
/// (`Oneshot`), as `TowerToHyperService` does for every request.
#[derive(Debug)]
pub struct ConnectionService<S> {
    stack: RefCell<S>,
    peer: SocketAddr,
}

impl<S> ConnectionService<S> {
    /// Serves the connection from `peer` with `stack`.
    pub fn new(stack: S, peer: SocketAddr) -> Self {
        Self {
            stack: RefCell::new(stack),
            peer,
        }
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnectionService<S>
where
    S: Service<Request<Incoming>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Pin<Box<Oneshot<S, Request<Incoming>>>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // The bare peer address: the type the ecosystem's extractors
        // (palisade-ratelimit's `ClientIp`, axum's `ConnectInfo` idiom) read,
        // and the one extension per request (the proxy keeps the formatted
        // `X-Forwarded-For` / `Forwarded` elements per connection itself).
        req.extensions_mut().insert(self.peer);
        // Never re-entered: hyper finishes `call` before the next one.
        let mut stack = self.stack.borrow_mut();
        // A readiness check that does not wait: with a no-op waker, Pending
        // only means "take the slow path", whose Oneshot polls again with the
        // request task's waker.
        let mut cx = Context::from_waker(Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
            // Boxed: a clone of the stack and the request would otherwise
            // set the size of every request's future, slow path or not.
            _ => Either::Right(Box::pin(Oneshot::new(stack.clone(), req))),
        }
    }
}
