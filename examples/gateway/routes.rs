//! Built-in routes, answered by the gateway itself before any policy layer
//! (so probes and the fault switch work while a limiter rejects or a breaker
//! is open):
//!
//! - `/healthz`: liveness, `200 ok` while the process serves.
//! - `/readyz`: readiness, `200 ready` or `503 not ready` from [`Readiness`]
//!   (cleared when draining starts).
//! - `/metrics`: Prometheus text format.
//! - `/demo/faults`: the demo upstream's fault injection and capacity model
//!   (only when the demo upstream runs inside the gateway): `GET` shows it
//!   as JSON, `PUT`/`POST` with
//!   `?error_rate=0.5&latency_ms=100&slots=16&service_time=20ms` (any of
//!   them) changes it, from a loopback peer only (`403` otherwise).
//! - `/demo/stats`: the demo upstream's counters as JSON (`/items` calls;
//!   requests served, queued and in service).
//!
//! Both demo routes are the demo upstream's own control routes
//! (`upstream.rs`), answered here so they skip the policy layers.
//!
//! `/metrics` and the demo routes are the admin surface: with
//! `server.admin_listen` set they are served on that listener only
//! (`admin.rs`), and the public port forwards those paths like any other.
//! `/healthz` and `/readyz` are served on both.
//!
//! Everything else goes down the stack to the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::body::Body;
use crate::upstream::{self, Faults};

/// The route a request belongs to; also the `route` metric label, so the
/// label set stays small whatever paths clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`
    Healthz = 0,
    /// `/readyz`
    Readyz = 1,
    /// `/metrics`
    Metrics = 2,
    /// `/demo/faults`
    DemoFaults = 3,
    /// `/demo/stats`
    DemoStats = 4,
    /// Everything else: forwarded upstream.
    Proxy = 5,
}

impl Route {
    /// Every route, indexed by its discriminant.
    pub const ALL: [Route; 6] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::DemoFaults,
        Route::DemoStats,
        Route::Proxy,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::DemoFaults => "demo_faults",
            Route::DemoStats => "demo_stats",
            Route::Proxy => "proxy",
        }
    }
}

/// Classifies request paths into [`Route`]s.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    demo: bool,
    admin: bool,
}

impl Routes {
    /// `demo`: whether the `/demo/*` routes are built in (the demo upstream
    /// runs) or are forwarded like any path. `admin`: whether this listener
    /// serves the admin surface (`/metrics`, `/demo/*`); without it those
    /// paths are forwarded too.
    pub fn new(demo: bool, admin: bool) -> Self {
        Self { demo, admin }
    }

    /// The route of `path`.
    pub fn classify(&self, path: &str) -> Route {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" if self.admin => Route::Metrics,
            "/demo/faults" if self.admin && self.demo => Route::DemoFaults,
            "/demo/stats" if self.admin && self.demo => Route::DemoStats,
            _ => Route::Proxy,
        }
    }
}

/// Whether `req` came from a loopback peer (the `SocketAddr` extension the
/// connection service attaches). An IPv4 client of a dual-stack listener
/// (`::ffff:127.0.0.1`) is loopback too. A request without a peer address
/// is not: an operator-only route fails closed.
pub fn from_loopback<B>(req: &Request<B>) -> bool {
    req.extensions()
        .get::<std::net::SocketAddr>()
        .is_some_and(|peer| peer.ip().to_canonical().is_loopback())
}

/// The readiness flag behind `/readyz`. Clones share it; draining clears it
/// so load balancers stop sending new traffic.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag that starts ready.
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// State the built-in routes answer from.
#[derive(Debug)]
pub struct RoutesState {
    /// Classifier shared with the telemetry layer.
    pub routes: Routes,
    /// Backs `/readyz`.
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Backs `/demo/faults` when the demo upstream runs.
    pub faults: Option<Faults>,
}

/// Layer that answers the built-in routes; see the module docs.
#[derive(Debug, Clone)]
pub struct BuiltinRoutesLayer {
    state: Arc<RoutesState>,
}

impl BuiltinRoutesLayer {
    /// Answers from `state`.
    pub fn new(state: RoutesState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }
}

impl<S> Layer<S> for BuiltinRoutesLayer {
    type Service = BuiltinRoutes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BuiltinRoutes {
            inner,
            state: self.state.clone(),
            inner_ready: false,
        }
    }
}

/// See [`BuiltinRoutesLayer`].
///
/// Always ready: a built-in route must answer even while the layers below
/// apply backpressure. `poll_ready` still asks the inner service, without
/// waiting: when it is ready a forwarded request is called on it directly,
/// otherwise the request drives the inner readiness itself (`Oneshot` on a
/// clone, the idiom axum's router uses).
#[derive(Debug)]
pub struct BuiltinRoutes<S> {
    inner: S,
    state: Arc<RoutesState>,
    /// `inner.poll_ready` returned ready and `inner.call` was not made yet.
    inner_ready: bool,
}

impl<S: Clone> Clone for BuiltinRoutes<S> {
    fn clone(&self) -> Self {
        // A clone has not polled its inner service.
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
            inner_ready: false,
        }
    }
}

impl<S, B> Service<Request<B>> for BuiltinRoutes<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RoutesFuture<S::Future, Pin<Box<Oneshot<S, Request<B>>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.inner_ready
            && let Poll::Ready(ready) = self.inner.poll_ready(cx)
        {
            ready?;
            self.inner_ready = true;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = self.state.routes.classify(req.uri().path());
        if route != Route::Proxy {
            if std::mem::take(&mut self.inner_ready) {
                // Release what the inner `poll_ready` reserved (a breaker's
                // probe permit, a limiter's token): this service lives as
                // long as its connection, and a built-in route must not hold
                // capacity until the next forwarded request. Dropping the
                // ready instance releases it; a clone starts unreserved.
                self.inner = self.inner.clone();
            }
            return RoutesFuture::Local {
                res: Some(self.answer(route, &req)),
            };
        }
        if std::mem::take(&mut self.inner_ready) {
            return RoutesFuture::Called {
                inner: self.inner.call(req),
            };
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Boxed: a service and a request, in a future every layer above
        // moves; taken only by a `call` without `poll_ready` first (the
        // connection service always polls first).
        RoutesFuture::Waiting {
            inner: Box::pin(inner.oneshot(req)),
        }
    }
}

impl<S> BuiltinRoutes<S> {
    fn answer<B>(&self, route: Route, req: &Request<B>) -> Response<Body> {
        match route {
            Route::Healthz => text(StatusCode::OK, "ok\n"),
            Route::Readyz if self.state.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
            Route::Readyz => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            Route::Metrics => {
                let mut res = Response::new(Body::from(self.state.metrics.render()));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            Route::DemoFaults => match &self.state.faults {
                Some(faults) => upstream::faults_route(faults, req),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            Route::DemoStats => match &self.state.faults {
                Some(faults) => upstream::stats_route(faults),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            Route::Proxy => unreachable!("forwarded requests are not answered locally"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pin_project! {
    /// Response future of [`BuiltinRoutes`].
    #[project = RoutesFutureProj]
    #[derive(Debug)]
    pub enum RoutesFuture<F, W> {
        /// Forwarded to the ready inner service.
        Called { #[pin] inner: F },
        /// Forwarded, waiting for the inner service to become ready.
        Waiting { #[pin] inner: W },
        /// Answered by a built-in route.
        Local { res: Option<Response<Body>> },
    }
}

impl<F, W, E> Future for RoutesFuture<F, W>
where
    F: Future<Output = Result<Response<Body>, E>>,
    W: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutesFutureProj::Called { inner } => inner.poll(cx),
            RoutesFutureProj::Waiting { inner } => inner.poll(cx),
            RoutesFutureProj::Local { res } => Poll::Ready(Ok(res
                .take()
                .expect("RoutesFuture polled after completion"))),
        }
    }
}
