//! `[scatter]`: a route that asks every upstream at once (palisade-fanout's
//! scatter-gather) and answers one JSON document with each upstream's
//! status and body.
//!
//! `GET {path}/rest?query` sends `GET /rest?query` to every configured
//! upstream. Without `quorum` it waits for all of them (each bounded by
//! `upstream.timeout`) and reports every answer or failure; with
//! `quorum = k` it answers as soon as `k` upstreams answered 2xx (after
//! the optional `grace` for stragglers), or 502 once `k` became
//! impossible. Other methods on the route are 405.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_fanout::BranchError;
use palisade_fanout::scatter::{All, GatherExt, Merged, Quorum, Scatter};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::body::Body;
use crate::config::{ConfigDuration, ConfigError, UpstreamConfig};
use crate::proxy::Upstreams;

/// `[scatter]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScatterConfig {
    /// Path prefix of the scatter route (e.g. `"/scatter"`); unset: no
    /// scatter route.
    pub path: Option<String>,
    /// Answer once this many upstreams answered 2xx; unset: wait for all.
    pub quorum: Option<usize>,
    /// With `quorum`: how long to keep collecting stragglers.
    pub grace: Option<ConfigDuration>,
    /// Most bytes of each upstream's body put in the document; longer
    /// bodies are reported as an error for that upstream.
    pub max_body: usize,
}

impl Default for ScatterConfig {
    fn default() -> Self {
        Self {
            path: None,
            quorum: None,
            grace: None,
            max_body: 64 * 1024,
        }
    }
}

/// One upstream's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    status: StatusCode,
    body: Bytes,
}

type Branch = BoxCloneSyncService<PathAndQuery, Answer, BoxError>;

/// The built route, shared by every clone of the layer.
#[derive(Debug)]
pub struct ScatterRoute {
    prefix: String,
    service: ScatterService,
}

#[derive(Debug, Clone)]
enum ScatterService {
    All(Scatter<Branch, Merged<All, MergeAll>>),
    Quorum(Scatter<Branch, Merged<Quorum, MergeQuorum>>),
}

/// Reduces `All`'s results to the JSON response.
type MergeAll =
    Box<dyn Fn(Vec<Result<Answer, BranchError>>) -> Result<Response<Body>, BoxError> + Send + Sync>;
/// Reduces a quorum's successes to the JSON response.
type MergeQuorum =
    Box<dyn Fn(Vec<(usize, Answer)>) -> Result<Response<Body>, BoxError> + Send + Sync>;

/// An HTTP/1 client for the fan-out routes (scatter and hedging), with the
/// `[upstream]` connect timeout and pool settings.
pub fn client(config: &UpstreamConfig) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout.get()));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout.get())
        .pool_max_idle_per_host(config.pool_max_idle)
        .build(connector)
}

/// Checks `[scatter]` against the number of upstreams before anything is
/// bound (the route itself is built once the demo upstream, if any, runs).
pub fn check(config: &ScatterConfig, upstreams: usize) -> Result<(), ConfigError> {
    if let Some(prefix) = &config.path
        && (!prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/'))
    {
        return Err(ConfigError::key(
            "scatter.path",
            format!("{prefix:?} must start with / and not end with one"),
        ));
    }
    if config.path.is_none() {
        return Ok(());
    }
    if let Some(k) = config.quorum {
        let mut q = Quorum::new(k);
        if let Some(grace) = config.grace {
            q = q.grace(grace.get());
        }
        palisade_fanout::scatter::Strategy::validate(&q, upstreams).map_err(fanout_err)?;
    }
    Ok(())
}

/// The crate names its own fields; the gateway names its keys.
fn fanout_err(e: palisade_fanout::ConfigError) -> ConfigError {
    let key = match e.field() {
        "quorum.k" => "scatter.quorum",
        "quorum.grace" => "scatter.grace",
        other => other,
    };
    ConfigError::key(key, e.reason())
}

/// Builds the route (`None` when `[scatter]` has no `path`); errors name
/// the key.
pub fn route(
    config: &ScatterConfig,
    upstreams: &Upstreams,
    upstream: &UpstreamConfig,
) -> Result<Option<Arc<ScatterRoute>>, ConfigError> {
    check(config, upstreams.list().len())?;
    let Some(prefix) = &config.path else {
        return Ok(None);
    };
    let client = client(upstream);
    let names: Arc<[String]> = upstreams
        .list()
        .iter()
        .map(|u| u.authority.to_string())
        .collect();
    let quorum = config.quorum.is_some();
    let branches: Vec<Branch> = upstreams
        .list()
        .iter()
        .map(|u| branch(client.clone(), u.authority.clone(), config.max_body, quorum))
        .collect();
    let builder = Scatter::builder(branches)
        .name("gateway")
        .branch_timeout(upstream.timeout.get());
    let service = match config.quorum {
        None => {
            let names = names.clone();
            let merge: MergeAll = Box::new(move |results| {
                Ok(render(
                    results
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (i, r.map_err(|e| describe(&e)))),
                    &names,
                    None,
                ))
            });
            ScatterService::All(builder.build(All.merge(merge)).map_err(fanout_err)?)
        }
        Some(k) => {
            let mut q = Quorum::new(k);
            if let Some(grace) = config.grace {
                q = q.grace(grace.get());
            }
            let names = names.clone();
            let merge: MergeQuorum = Box::new(move |successes| {
                Ok(render(
                    successes.into_iter().map(|(i, a)| (i, Ok(a))),
                    &names,
                    Some(k),
                ))
            });
            ScatterService::Quorum(builder.build(q.merge(merge)).map_err(fanout_err)?)
        }
    };
    Ok(Some(Arc::new(ScatterRoute {
        prefix: prefix.clone(),
        service,
    })))
}

/// The branch for one upstream: `GET http://{authority}{path}`, the body
/// read up to `max_body`. In quorum mode a non-2xx answer is a failure.
fn branch(
    client: Client<HttpConnector, Full<Bytes>>,
    authority: Authority,
    max_body: usize,
    only_success: bool,
) -> Branch {
    BoxCloneSyncService::new(tower::service_fn(move |path: PathAndQuery| {
        let client = client.clone();
        let authority = authority.clone();
        async move {
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()?;
            let res = client
                .request(Request::get(uri).body(Full::new(Bytes::new()))?)
                .await?;
            let status = res.status();
            if only_success && !status.is_success() {
                return Err(BoxError::from(format!("status {}", status.as_u16())));
            }
            let body = Limited::new(res.into_body(), max_body)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, BoxError>(Answer { status, body })
        }
    }))
}

fn describe(e: &BranchError) -> String {
    match e {
        BranchError::Service(e) => crate::proxy::ErrorChain(&**e).to_string(),
        other => other.to_string(),
    }
}

/// `{"quorum":k,"upstreams":[{"upstream":"host:port","status":200,"body":"..."}, {"upstream":..., "error":"..."}]}`
fn render(
    entries: impl Iterator<Item = (usize, Result<Answer, String>)>,
    names: &[String],
    quorum: Option<usize>,
) -> Response<Body> {
    let mut out = String::from("{");
    if let Some(k) = quorum {
        let _ = write!(out, "\"quorum\":{k},");
    }
    out.push_str("\"upstreams\":[");
    for (n, (i, entry)) in entries.enumerate() {
        if n > 0 {
            out.push(',');
        }
        let name = serde_json::to_string(&names[i]).expect("a string serializes");
        match entry {
            Ok(a) => {
                let body = serde_json::to_string(&String::from_utf8_lossy(&a.body))
                    .expect("a string serializes");
                let _ = write!(
                    out,
                    "{{\"upstream\":{name},\"status\":{},\"body\":{body}}}",
                    a.status.as_u16()
                );
            }
            Err(e) => {
                let e = serde_json::to_string(&e).expect("a string serializes");
                let _ = write!(out, "{{\"upstream\":{name},\"error\":{e}}}");
            }
        }
    }
    out.push_str("]}\n");
    json(StatusCode::OK, out)
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

impl ScatterRoute {
    /// The upstream path for `uri` if it is on this route.
    fn upstream_path(&self, uri: &Uri) -> Option<PathAndQuery> {
        let rest = uri.path().strip_prefix(self.prefix.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        let pq = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        pq.parse().ok()
    }

    fn call(&self, path: PathAndQuery) -> BoxFuture {
        match self.service.clone() {
            ScatterService::All(s) => Box::pin(s.oneshot(path)),
            // A named future (no async block): the scatter future's
            // bounds trip the compiler's `Send` check inside one.
            ScatterService::Quorum(s) => Box::pin(s.map_result(quorum_failed).oneshot(path)),
        }
    }
}

/// A failed quorum is a 502 with the reason.
fn quorum_failed(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    Ok(result.unwrap_or_else(|e| {
        let msg = serde_json::to_string(&e.to_string()).expect("a string serializes");
        json(StatusCode::BAD_GATEWAY, format!("{{\"error\":{msg}}}\n"))
    }))
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// Answers the scatter route; every other request goes to the inner
/// service.
#[derive(Debug, Clone)]
pub struct ScatterLayer {
    route: Option<Arc<ScatterRoute>>,
}

impl ScatterLayer {
    /// The layer for `route` (`None`: a pass-through).
    pub fn new(route: Option<Arc<ScatterRoute>>) -> Self {
        Self { route }
    }
}

impl<S> Layer<S> for ScatterLayer {
    type Service = ScatterRouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScatterRouteService {
            inner,
            route: self.route.clone(),
        }
    }
}

/// See [`ScatterLayer`].
#[derive(Debug, Clone)]
pub struct ScatterRouteService<S> {
    inner: S,
    route: Option<Arc<ScatterRoute>>,
}

impl<S, B> Service<Request<B>> for ScatterRouteService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(route) = &self.route
            && let Some(path) = route.upstream_path(req.uri())
        {
            if req.method() != Method::GET {
                let mut res = Response::new(Body::from("method not allowed\n"));
                *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                return RouteFuture::Own {
                    future: Box::pin(std::future::ready(Ok(res))),
                };
            }
            return RouteFuture::Own {
                future: route.call(path),
            };
        }
        RouteFuture::Inner {
            future: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of the fan-out routes: the inner service's, or one of
    /// the route's own (boxed: its branches are boxed services anyway).
    #[project = RouteProj]
    pub enum RouteFuture<F> {
        /// Passed through.
        Inner { #[pin] future: F },
        /// Answered by the route.
        Own { future: BoxFuture },
    }
}

impl<F, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteProj::Inner { future } => future.poll(cx).map_err(Into::into),
            RouteProj::Own { future } => future.as_mut().poll(cx),
        }
    }
}
