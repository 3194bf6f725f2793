//! `[batch]`: `GET /items/{id}` lookups from many clients coalesced into
//! upstream `GET /items?ids=...` calls (`palisade-batch`), with
//! de-duplication.
//!
//! The layer sits right after rate limiting (see `stack.rs`), so each
//! client's lookup still spends its own rate-limit cell. The batcher's inner
//! service is a stack of its own: upstream choice, the same per-upstream
//! breakers as the proxy, the upstream timeout, and a small HTTP client. So
//! the breaker sees one outcome per *batch* (the call the upstream actually
//! served): a failing batch of 64 is one failure, not 64. Each caller gets
//! exactly its own item's JSON, byte for byte as the upstream wrote it; an
//! id the upstream did not return is that caller's 404; a failed batch maps
//! like a failed proxied request (502, 503 from an open breaker, 504).
//!
//! Off by default: coalescing changes what the upstream sees (one request
//! with many ids instead of many requests), which only an upstream with a
//! batch endpoint supports. See `docs/gateway.md`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::batch::{Batch, BatchHandle, BatchLayer, Flush};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::timeout::TimeoutLayer;
use tower::util::Oneshot;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

use crate::body::Body;
use crate::config::{ConfigDuration, ConfigError, UpstreamConfig};
use crate::proxy::{ChooseUpstreamLayer, Upstream, Upstreams};
use crate::telemetry::UpstreamMetrics;

/// `[batch]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Coalesce `/items/{id}` lookups (off: they are proxied one by one).
    pub enabled: bool,
    /// Most ids in one upstream call.
    pub max_items: usize,
    /// Most upstream batch calls at once.
    pub max_in_flight: usize,
    /// `"opportunistic"`: send as soon as a batch slot is free;
    /// `"timer"`: wait up to `max_latency` for a fuller batch.
    pub flush: FlushMode,
    /// `flush = "timer"` only: longest wait for a fuller batch.
    pub max_latency: ConfigDuration,
    /// Most lookups waiting for a batch; more wait to be queued.
    pub queue_capacity: usize,
    /// Send each id once per batch, however many clients asked for it.
    pub dedup: bool,
}

/// `[batch] flush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// See [`Flush::Opportunistic`].
    Opportunistic,
    /// See [`Flush::Timer`].
    Timer,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_items: palisade::batch::DEFAULT_MAX_ITEMS,
            max_in_flight: palisade::batch::DEFAULT_MAX_IN_FLIGHT,
            flush: FlushMode::Opportunistic,
            max_latency: ConfigDuration(palisade::batch::DEFAULT_MAX_LATENCY),
            queue_capacity: palisade::batch::DEFAULT_QUEUE_CAPACITY,
            dedup: true,
        }
    }
}

/// Most ids the demo upstream's `/items?ids=` takes in one call.
const UPSTREAM_MAX_IDS: usize = 1000;

/// One item's answer: its JSON object, or `None` when the upstream did not
/// return that id.
pub type Item = Option<Bytes>;

/// The validated batch layer, built before any port is bound; `None` when
/// `[batch]` is off. Errors name the `batch.*` key.
pub fn layer(config: &BatchConfig) -> Result<Option<BatchLayer<u64, Item>>, ConfigError> {
    if !config.enabled {
        return Ok(None);
    }
    if config.max_items > UPSTREAM_MAX_IDS {
        return Err(ConfigError::key(
            "batch.max_items",
            format!("must be at most {UPSTREAM_MAX_IDS} (ids per upstream /items call)"),
        ));
    }
    let mut b = BatchLayer::builder()
        .name("items")
        .max_items(config.max_items)
        .max_in_flight(config.max_in_flight)
        .max_latency(config.max_latency.get())
        .queue_capacity(config.queue_capacity)
        .flush(match config.flush {
            FlushMode::Opportunistic => Flush::Opportunistic,
            FlushMode::Timer => Flush::Timer,
        });
    if config.dedup {
        b = b.dedup(|id: &u64| *id);
    }
    b.build()
        .map(Some)
        .map_err(|e| ConfigError::key(&format!("batch.{}", e.field()), e.reason()))
}

/// The running batcher: the service every connection's stack calls, and
/// the handle the shutdown's flush phase drains.
#[derive(Debug, Clone)]
pub struct Items {
    /// The batcher.
    pub batch: Batch<u64, Item>,
    /// Closes and drains it.
    pub handle: BatchHandle,
}

/// Starts the batcher over its own upstream stack: choice, the proxy's
/// breakers (one outcome per batch), the upstream timeout, an HTTP client.
pub fn start(
    layer: BatchLayer<u64, Item>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<UpstreamMetrics>,
    breaker: crate::breaker::BatchBreakerLayer,
    config: &UpstreamConfig,
) -> Items {
    let handle = layer.handle();
    let fetch = ServiceBuilder::new()
        .layer(ChooseUpstreamLayer::new(upstreams, metrics))
        .layer(breaker)
        .layer(TimeoutLayer::new(config.timeout.get()))
        .service(UpstreamClient::new(config));
    let batch = layer.layer(FetchItems { inner: fetch });
    Items { batch, handle }
}

/// The batcher's inner service: one upstream `/items?ids=` call for a batch
/// of ids, split back into one answer per id, in order.
#[derive(Debug, Clone)]
struct FetchItems<S> {
    inner: S,
}

/// A batch call's failure (the batch's callers see it as the source of
/// `palisade::batch::Error::Failed`; the stack answers it with 502).
#[derive(Debug)]
pub enum FetchError {
    /// The upstream answered the batch call with a status other than 200.
    Status(StatusCode),
    /// The answer could not be read or split into items.
    Body(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Status(s) => write!(f, "upstream answered the batch with {s}"),
            FetchError::Body(e) => write!(f, "upstream batch answer unreadable: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

impl<S> Service<Vec<u64>> for FetchItems<S>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Vec<Item>;
    type Error = BoxError;
    // One allocation per batch, not per item.
    type Future = Pin<Box<dyn Future<Output = Result<Vec<Item>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, ids: Vec<u64>) -> Self::Future {
        let mut query = String::with_capacity(12 + ids.len() * 8);
        query.push_str("/items?ids=");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                query.push(',');
            }
            query.push_str(itoa::Buffer::new().format(*id));
        }
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = Uri::try_from(query).expect("digits and commas form a valid path");
        let response = self.inner.call(req);
        Box::pin(async move {
            let res = response.await.map_err(Into::into)?;
            if res.status() != StatusCode::OK {
                return Err(FetchError::Status(res.status()).into());
            }
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?
                .to_bytes();
            split(&ids, &body).map_err(|e| FetchError::Body(e).into())
        })
    }
}

/// Splits the upstream's JSON array into each id's own object, byte for
/// byte, in the order of `ids`.
fn split(ids: &[u64], body: &Bytes) -> Result<Vec<Item>, String> {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    let objects: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut by_id = std::collections::HashMap::with_capacity(objects.len());
    for raw in objects {
        let Id { id } = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        by_id.insert(id, body.slice_ref(raw.get().as_bytes()));
    }
    Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
}

/// Sends a batch request to the upstream named by its [`Upstream`]
/// extension (hyper-util's pooled client: a handful of calls per batch
/// window, so the proxy's own hot-path pool is not needed here).
#[derive(Debug, Clone)]
struct UpstreamClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl UpstreamClient {
    fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout.get()));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout.get())
            .build(connector);
        Self { client }
    }
}

impl Service<Request<Empty<Bytes>>> for UpstreamClient {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Empty<Bytes>>) -> Self::Future {
        let Some(upstream) = req.extensions_mut().remove::<Upstream>() else {
            return Box::pin(std::future::ready(Err(
                crate::proxy::ProxyError::NoUpstream.into(),
            )));
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match Uri::try_from(format!("http://{}{path}", upstream.authority)) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        let sent = self.client.request(req);
        Box::pin(async move { sent.await.map_err(Into::into) })
    }
}

// === the route ===

/// Sends `GET /items/{id}` through the batcher when `[batch]` is on;
/// everything else goes down the stack unchanged.
#[derive(Debug, Clone)]
pub struct ItemsRouteLayer {
    items: Option<Batch<u64, Item>>,
}

impl ItemsRouteLayer {
    /// `items`: the running batcher, or `None` when `[batch]` is off.
    pub fn new(items: Option<Batch<u64, Item>>) -> Self {
        Self { items }
    }
}

impl<S> Layer<S> for ItemsRouteLayer {
    type Service = ItemsRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ItemsRoute {
            inner,
            items: self.items.clone(),
        }
    }
}

/// See [`ItemsRouteLayer`].
#[derive(Debug, Clone)]
pub struct ItemsRoute<S> {
    inner: S,
    items: Option<Batch<u64, Item>>,
}

/// The id of a `GET /items/{id}` request.
fn item_id<B>(req: &Request<B>) -> Option<u64> {
    if req.method() != Method::GET {
        return None;
    }
    let id = req.uri().path().strip_prefix("/items/")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

impl<S> Service<Request<Incoming>> for ItemsRoute<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ItemsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The batcher's queue slot is reserved by the lookup's own future,
        // so requests that are not lookups never wait for it.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match (&self.items, item_id(&req)) {
            (Some(items), Some(id)) => ItemsFuture::Batched {
                lookup: items.clone().oneshot(id),
            },
            _ => ItemsFuture::Inner {
                inner: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`ItemsRoute`].
    #[project = ItemsFutureProj]
    pub enum ItemsFuture<F> {
        /// A lookup waiting for its batch.
        Batched { #[pin] lookup: Oneshot<Batch<u64, Item>, u64> },
        /// Any other request.
        Inner { #[pin] inner: F },
    }
}

impl<F, E> Future for ItemsFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ItemsFutureProj::Inner { inner } => inner.poll(cx).map_err(Into::into),
            ItemsFutureProj::Batched { lookup } => Poll::Ready(match ready!(lookup.poll(cx)) {
                Ok(Some(json)) => {
                    let mut res = Response::new(Body::from(json));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok(res)
                }
                Ok(None) => {
                    let mut res = Response::new(Body::from("no such item\n"));
                    *res.status_mut() = StatusCode::NOT_FOUND;
                    Ok(res)
                }
                // Mapped by the stack's one error-to-response place.
                Err(e) => Err(e),
            }),
        }
    }
}
