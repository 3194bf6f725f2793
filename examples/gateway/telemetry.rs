//! Logging (`tracing`) and metrics (`metrics` + Prometheus exporter), and
//! the outermost layer of the stack, [`TelemetryLayer`]: one access-log
//! event, one request count and one latency sample per request.
//!
//! Metric names (documented in `docs/gateway.md`):
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `gateway_requests_total` | counter | `route`, `status` |
//! | `gateway_request_duration_seconds` | histogram | `route`, `status` |
//! | `gateway_requests_in_flight` | gauge | `route` |
//! | `gateway_upstream_errors_total` | counter | `upstream`, `kind` |
//! | `gateway_connections_total` | counter | |
//! | `gateway_refused_total` | counter | `reason` (`edge.rs`) |
//!
//! The hot path never formats a label: handles are registered once per
//! (route, status) and cached in a fixed table.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::access_log::{AccessLogSink, AccessRecord};
use crate::config::{LogConfig, LogFormat};
use crate::proxy::{Upstream, UpstreamErrorKind, Upstreams};
use crate::routes::{Route, Routes};

/// The access log's `tracing` target (`RUST_LOG=gateway::access=off`
/// silences it).
pub const ACCESS_TARGET: &str = "gateway::access";

/// Installs the global `tracing` subscriber: `RUST_LOG` if set, else
/// `log.filter`; JSON or human-readable lines on stdout.
// Unused when tokio-console's subscriber replaces it (see main.rs).
#[cfg_attr(all(feature = "console", tokio_unstable), allow(dead_code))]
pub fn init_logging(config: &LogConfig) {
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.filter.clone());
    if !config.access_log {
        filter.push_str(",gateway::access=off");
    }
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: invalid log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

/// Latency buckets in seconds: 100 µs .. 30 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// Installs the global Prometheus recorder and returns the handle `/metrics`
/// renders from. Spawns the exporter's periodic upkeep (needs a runtime).
pub fn init_metrics() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
        .expect("buckets are not empty")
        .install_recorder()
        .expect("the metrics recorder is installed once, at start-up");
    metrics::describe_counter!(
        "gateway_requests_total",
        "Requests answered, by route and status."
    );
    metrics::describe_histogram!(
        "gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request head to response head, by route and status."
    );
    metrics::describe_gauge!(
        "gateway_requests_in_flight",
        "Requests received and not yet answered, by route."
    );
    metrics::describe_counter!(
        "gateway_upstream_errors_total",
        "Failed upstream exchanges, by upstream and kind (connect, timeout, protocol)."
    );
    metrics::describe_counter!("gateway_connections_total", "Client connections accepted.");
    metrics::describe_counter!(
        crate::edge::REFUSED,
        "Requests refused at the edge and never forwarded, by reason (method, host, head)."
    );
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    handle
}

// === RequestMetrics ===

/// Status codes `http` accepts are 100..=999.
const STATUS_SLOTS: usize = 900;

struct RouteSlot {
    in_flight: Gauge,
    by_status: Box<[OnceLock<(Counter, Histogram)>]>,
}

/// Cached metric handles for every (route, status) pair; registering happens
/// on the first request with a given pair, never again.
pub struct RequestMetrics {
    routes: Vec<RouteSlot>,
    connections: Counter,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

impl RequestMetrics {
    /// Registers the per-route gauges (call after [`init_metrics`]).
    pub fn new() -> Self {
        let routes = Route::ALL
            .iter()
            .map(|r| RouteSlot {
                in_flight: metrics::gauge!("gateway_requests_in_flight", "route" => r.as_str()),
                by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            })
            .collect();
        Self {
            routes,
            connections: metrics::counter!("gateway_connections_total"),
        }
    }

    /// Counts an accepted client connection.
    pub fn connection_accepted(&self) {
        self.connections.increment(1);
    }

    fn record(&self, route: Route, status: StatusCode, elapsed: Duration) {
        let slot = &self.routes[route as usize];
        let idx = usize::from(status.as_u16()) - 100;
        let (count, latency) = slot.by_status[idx].get_or_init(|| {
            let labels = [
                ("route", route.as_str().to_owned()),
                ("status", status.as_str().to_owned()),
            ];
            (
                metrics::counter!("gateway_requests_total", &labels),
                metrics::histogram!("gateway_request_duration_seconds", &labels),
            )
        });
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    }
}

/// Upstream error counters, one per (upstream, kind), registered at start.
pub struct UpstreamMetrics {
    errors: Vec<[Counter; 3]>,
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics").finish_non_exhaustive()
    }
}

impl UpstreamMetrics {
    /// Registers the counters for every configured upstream.
    pub fn new(upstreams: &Upstreams) -> Self {
        let errors = upstreams
            .list()
            .iter()
            .map(|u| {
                UpstreamErrorKind::ALL.map(|kind| {
                    metrics::counter!(
                        "gateway_upstream_errors_total",
                        "upstream" => u.authority.to_string(),
                        "kind" => kind.as_str()
                    )
                })
            })
            .collect();
        Self { errors }
    }

    /// Counts one failure of upstream `index`.
    pub fn record(&self, index: usize, kind: UpstreamErrorKind) {
        let k = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is in ALL");
        self.errors[index][k].increment(1);
    }
}

// === TelemetryLayer ===

/// Outermost layer: access log, request count, latency and in-flight gauge
/// for every request, including those answered by built-in routes and the
/// rejections of inner layers (429, 503), so the numbers match what clients
/// saw.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    metrics: Arc<RequestMetrics>,
    routes: Routes,
    access_log: Option<AccessLogSink>,
}

impl TelemetryLayer {
    /// Records into `metrics`; `routes` names the route of each request.
    pub fn new(metrics: Arc<RequestMetrics>, routes: Routes) -> Self {
        Self {
            metrics,
            routes,
            access_log: None,
        }
    }

    /// Sends the access log to the `[access_log]` pipeline instead of a
    /// `tracing` event.
    pub fn with_access_log(mut self, sink: Option<AccessLogSink>) -> Self {
        self.access_log = sink;
        self
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
            routes: self.routes,
            access_log: self.access_log.clone(),
        }
    }
}

/// See [`TelemetryLayer`].
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
    routes: Routes,
    access_log: Option<AccessLogSink>,
}

/// What the access log needs from the request, captured only when the
/// `gateway::access` target is enabled.
struct AccessInfo {
    method: Method,
    uri: Uri,
    client: Option<SocketAddr>,
    /// Where the record goes; `None`: a `tracing` event.
    sink: Option<AccessLogSink>,
}

impl<S, B, RB> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let route = self.routes.classify(req.uri().path());
        // A disabled access log costs this one cached callsite check.
        let on = self.access_log.is_some() || tracing::enabled!(target: ACCESS_TARGET, Level::INFO);
        // Boxed: with the log off, `None` then costs a pointer in a future
        // every layer above moves, instead of the URI's size.
        let access = on.then(|| {
            Box::new(AccessInfo {
                method: req.method().clone(),
                uri: req.uri().clone(),
                client: req.extensions().get::<SocketAddr>().copied(),
                sink: self.access_log.clone(),
            })
        });
        self.metrics.routes[route as usize].in_flight.increment(1.0);
        TelemetryFuture {
            inner: self.inner.call(req),
            start,
            access,
            in_flight: InFlight {
                metrics: self.metrics.clone(),
                route,
            },
        }
    }
}

/// Decrements the in-flight gauge when the request's future goes away,
/// answered or not (a client that disconnects drops it).
struct InFlight {
    metrics: Arc<RequestMetrics>,
    route: Route,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.routes[self.route as usize]
            .in_flight
            .decrement(1.0);
    }
}

pin_project! {
    /// Response future of [`Telemetry`].
    pub struct TelemetryFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        access: Option<Box<AccessInfo>>,
        in_flight: InFlight,
    }
}

impl<F> std::fmt::Debug for TelemetryFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryFuture")
            .field("route", &self.in_flight.route)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let elapsed = this.start.elapsed();
        // The stack below maps every error to a response, so `Err` does not
        // happen here; it would count as a 500.
        let (status, upstream) = match &result {
            Ok(res) => (res.status(), res.extensions().get::<Upstream>()),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        let route = this.in_flight.route;
        this.in_flight.metrics.record(route, status, elapsed);
        if let Some(a) = this.access.take() {
            let client = a.client.map(|c| c.ip());
            let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            if let Some(sink) = a.sink {
                sink.record(AccessRecord {
                    method: a.method,
                    uri: a.uri,
                    status: status.as_u16(),
                    latency_us,
                    upstream: upstream.map(|u| u.authority.clone()),
                    client,
                    route: route.as_str(),
                });
                return Poll::Ready(result);
            }
            let upstream = upstream.map(|u| u.authority.as_str()).unwrap_or("-");
            tracing::info!(
                target: ACCESS_TARGET,
                method = %a.method,
                path = %a.uri,
                status = status.as_u16(),
                latency_us,
                upstream,
                client = client.map(tracing::field::display),
                route = route.as_str(),
            );
        }
        Poll::Ready(result)
    }
}
