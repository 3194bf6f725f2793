//! `[hedge]`: hedged requests for idempotent proxied requests
//! (palisade-fanout's hedging with its budget).
//!
//! A GET, HEAD or OPTIONS request without a body is sent to the next
//! upstream in turn; if it has no response head within the hedge delay, the
//! same request goes to the following upstream, and the first non-5xx
//! response wins (the other attempt is cancelled). Hedges never exceed
//! `max_extra_load` of the requests over `budget_window` (plus
//! `min_hedges_per_sec`). Every other request takes the ordinary path
//! (upstream choice, breaker, timeout, proxy).
//!
//! Hedged requests go over their own keep-alive client, each attempt
//! bounded by `upstream.timeout`, and they bypass the per-upstream breaker:
//! a hedge is the answer to a slow upstream, the breaker the answer to a
//! failing one (docs/fan-out.md). The metrics are palisade-fanout's
//! `palisade_fanout_hedge_*` with `hedge="gateway"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_fanout::hedge::{Delay, Hedge, HedgeConfig as FanoutConfig};
use palisade_fanout::http::{HttpPolicy, is_safe_method};
use serde::Deserialize;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::body::Body;
use crate::config::{ConfigDuration, ConfigError, UpstreamConfig};
use crate::proxy::{Upstreams, remove_hop_by_hop};
use crate::scatter::RouteFuture;

/// `[hedge]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// Hedge idempotent requests at all.
    pub enabled: bool,
    /// A fixed hedge delay; unset: the `percentile` of recent latencies.
    pub delay: Option<ConfigDuration>,
    /// The latency percentile to hedge after (0 < p < 1), when `delay` is
    /// unset.
    pub percentile: f64,
    /// Attempts per request, the first included.
    pub max_attempts: usize,
    /// Hedges as a fraction of requests over `budget_window`.
    pub max_extra_load: f64,
    /// Hedges per second allowed on top of the fraction.
    pub min_hedges_per_sec: f64,
    /// The window the budget counts over.
    pub budget_window: ConfigDuration,
    /// The window of latencies the percentile is taken from.
    pub latency_window: ConfigDuration,
    /// Latency samples needed before a percentile delay hedges.
    pub min_samples: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            delay: None,
            percentile: 0.95,
            max_attempts: 2,
            max_extra_load: 0.05,
            min_hedges_per_sec: 0.0,
            budget_window: ConfigDuration::from_secs(10),
            latency_window: ConfigDuration::from_secs(10),
            min_samples: 100,
        }
    }
}

type Attempt = BoxCloneSyncService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;

/// Validates `[hedge]` into palisade-fanout's settings (`None`: disabled);
/// errors name the key. Runs before anything is bound.
pub fn settings(config: &HedgeConfig) -> Result<Option<FanoutConfig>, ConfigError> {
    if !config.enabled {
        return Ok(None);
    }
    let delay = match config.delay {
        Some(d) => Delay::Fixed(d.get()),
        None => Delay::Percentile(config.percentile),
    };
    let fanout = FanoutConfig::builder()
        .name("gateway")
        .delay(delay)
        .max_attempts(config.max_attempts)
        .max_extra_load(config.max_extra_load)
        .min_hedges_per_sec(config.min_hedges_per_sec)
        .budget_window(config.budget_window.get())
        .latency_window(config.latency_window.get())
        .min_samples(config.min_samples)
        .build()
        .map_err(|e| {
            let key = match e.field() {
                "delay.percentile" => "percentile",
                other => other,
            };
            ConfigError::key(&format!("hedge.{key}"), e.reason())
        })?;
    Ok(Some(fanout))
}

/// Builds the hedging layer from [`settings`] (a pass-through for `None`).
pub fn layer(
    fanout: Option<FanoutConfig>,
    upstreams: &Upstreams,
    upstream: &UpstreamConfig,
) -> HedgeLayer {
    let Some(fanout) = fanout else {
        return HedgeLayer { hedge: None };
    };
    let client = crate::scatter::client(upstream);
    let timeout = upstream.timeout.get();
    let replicas: Vec<Attempt> = upstreams
        .list()
        .iter()
        .map(|u| {
            let client = client.clone();
            let authority = u.authority.clone();
            let send = tower::service_fn(move |req: Request<Full<Bytes>>| {
                let client = client.clone();
                let req = to_upstream(req, &authority);
                async move { Ok::<_, BoxError>(client.request(req?).await?) }
            });
            BoxCloneSyncService::new(Timeout::new(send, timeout).map_err(|e: BoxError| e))
        })
        .collect();
    HedgeLayer {
        hedge: Some(Arc::new(Hedge::over(replicas, fanout).policy(HttpPolicy))),
    }
}

/// The request for `authority`: absolute URI, hop-by-hop fields removed.
fn to_upstream(
    mut req: Request<Full<Bytes>>,
    authority: &Authority,
) -> Result<Request<Full<Bytes>>, BoxError> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()?;
    *req.version_mut() = http::Version::HTTP_11;
    remove_hop_by_hop(req.headers_mut());
    Ok(req)
}

/// Hedges idempotent, bodiless requests; see the module docs.
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    hedge: Option<Arc<Hedge<Attempt, HttpPolicy>>>,
}

impl<S> Layer<S> for HedgeLayer {
    type Service = HedgeRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeRoute {
            inner,
            hedge: self.hedge.clone(),
        }
    }
}

/// See [`HedgeLayer`].
#[derive(Debug, Clone)]
pub struct HedgeRoute<S> {
    inner: S,
    hedge: Option<Arc<Hedge<Attempt, HttpPolicy>>>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl<S> Service<Request<Incoming>> for HedgeRoute<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let hedgeable =
            self.hedge.is_some() && is_safe_method(req.method()) && req.body().is_end_stream();
        let Some(hedge) = self.hedge.as_ref().filter(|_| hedgeable) else {
            return RouteFuture::Inner {
                future: self.inner.call(req),
            };
        };
        let (mut parts, _) = req.into_parts();
        if let Some(peer) = parts.extensions.get::<SocketAddr>()
            && let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string())
        {
            parts.headers.append(X_FORWARDED_FOR, ip);
        }
        let req = Request::from_parts(parts, Full::new(Bytes::new()));
        // A clone starts unreserved; `oneshot` drives it to readiness.
        let hedge = (**hedge).clone();
        RouteFuture::Own {
            future: Box::pin(async move {
                let res = hedge.oneshot(req).await?;
                let (mut parts, body) = res.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::stream(body)))
            }),
        }
    }
}
