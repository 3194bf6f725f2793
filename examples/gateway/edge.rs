//! The edge checks (layer 1a): requests the gateway refuses before any
//! other layer spends anything on them, and never forwards.
//!
//! | request | answer | `gateway_refused_total{reason}` |
//! |---------|--------|---------------------------------|
//! | `CONNECT` (a tunnel: the gateway is not a forward proxy) | `405` + `Allow` | `method` |
//! | `TRACE` (reflects the request's fields, cookies included: cross-site tracing) | `405` + `Allow` | `method` |
//! | HTTP/1.1 without `Host`, two `Host` fields, a `Host` that is not an authority or disagrees with the absolute-form target (RFC 9112 §3.2, §3.2.2) | `400` | `host` |
//! | more fields than `server.max_headers`, or a head (method, target, names and values) over `server.max_header_bytes` | `431` | `head` |
//!
//! Other methods, extension methods like `PURGE` included, are proxied.
//! Every refusal closes an HTTP/1 connection: after a refused `CONNECT` the
//! client may already be sending tunnel bytes, which must not be read as
//! the next request, and a client that sent a malformed head has no
//! business keeping the connection (nginx closes it too).
//!
//! hyper bounds the head first (`workers::http_builder`): an HTTP/1 head
//! that does not fit in its read buffer (`server.max_header_bytes`) or has
//! more than `server.max_headers` fields is answered `431` by hyper itself,
//! and an HTTP/2 header list over the advertised
//! `SETTINGS_MAX_HEADER_LIST_SIZE` by h2; neither reaches the stack. The
//! check here makes the budget exact for what does reach it (a head that
//! the last read completed past the buffer's end, HTTP/2's field count).
//!
//! Sits right below telemetry (so refusals are counted and logged with
//! their status) and above the built-in routes and every policy layer, so
//! a refused request costs no rate-limit cell, no in-flight slot and no
//! upstream call.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use metrics::Counter;
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::ServerConfig;

/// Requests refused by the edge checks, by `reason` (`method`, `host`,
/// `head`).
pub const REFUSED: &str = "gateway_refused_total";

/// What a `405` advertises: the methods the gateway proxies that have a
/// standard meaning. Extension methods are proxied too, but not advertised.
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH");

/// Why a request was refused; the metric's `reason` label.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Method = 0,
    Host = 1,
    Head = 2,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::Method, Refusal::Host, Refusal::Head];

    const fn as_str(self) -> &'static str {
        match self {
            Refusal::Method => "method",
            Refusal::Host => "host",
            Refusal::Head => "head",
        }
    }
}

#[derive(Debug)]
struct EdgeState {
    max_header_bytes: usize,
    max_headers: usize,
    /// One counter per [`Refusal`], registered at start-up.
    refused: [Counter; 3],
}

/// Layer of [`Edge`]; see the module docs.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    state: Arc<EdgeState>,
}

impl EdgeLayer {
    /// The checks for `server`'s head budget (call after
    /// `telemetry::init_metrics`: it registers the counters).
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            state: Arc::new(EdgeState {
                max_header_bytes: server.max_header_bytes,
                max_headers: server.max_headers,
                refused: Refusal::ALL.map(|r| metrics::counter!(REFUSED, "reason" => r.as_str())),
            }),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`EdgeLayer`].
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    state: Arc<EdgeState>,
}

impl<S, B> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(refusal) = self.state.check(&req) else {
            return Either::Left(self.inner.call(req));
        };
        // Release what the inner `poll_ready` reserved: this service lives
        // as long as its connection. A clone starts unreserved.
        self.inner = self.inner.clone();
        self.state.refused[refusal as usize].increment(1);
        Either::Right(ready(Ok(refuse(refusal, req.version()))))
    }
}

impl EdgeState {
    /// The first check `req` fails, if any. Cheapest first: the method is
    /// one comparison, the head budget one pass over the fields.
    fn check<B>(&self, req: &Request<B>) -> Option<Refusal> {
        let method = req.method();
        if method == Method::CONNECT || method == Method::TRACE {
            tracing::debug!(%method, "method refused");
            return Some(Refusal::Method);
        }
        let headers = req.headers();
        // `len` counts every field line, repeated names included.
        if headers.len() > self.max_headers {
            tracing::info!(
                fields = headers.len(),
                limit = self.max_headers,
                "request head over server.max_headers, refused 431"
            );
            return Some(Refusal::Head);
        }
        let uri = req.uri();
        let bytes = method.as_str().len()
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(0, |p| p.as_str().len())
            + headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum::<usize>();
        if bytes > self.max_header_bytes {
            tracing::info!(
                bytes,
                limit = self.max_header_bytes,
                "request head over server.max_header_bytes, refused 431"
            );
            return Some(Refusal::Head);
        }
        let mut hosts = headers.get_all(header::HOST).iter();
        let host_ok = match (hosts.next(), hosts.next()) {
            // HTTP/1.0 may omit Host; HTTP/2 carries `:authority` instead.
            (None, _) => req.version() != Version::HTTP_11,
            // An absolute-form target (or HTTP/2's `:authority`) names the
            // host too; two names for one request is how host confusion
            // starts, so a disagreement is refused rather than one of them
            // silently preferred.
            (Some(host), None) => {
                is_authority(host.as_bytes())
                    && uri
                        .authority()
                        .is_none_or(|a| a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()))
            }
            (Some(_), Some(_)) => false,
        };
        if !host_ok {
            tracing::debug!(version = ?req.version(), "missing, repeated or mismatched Host refused");
            return Some(Refusal::Host);
        }
        None
    }
}

/// Whether `host` is a valid `Host` value (RFC 9110 §7.2: `uri-host [
/// ":" port ]`): not empty, and only the characters a reg-name, an IP
/// literal and a port use. A byte scan, not a parse: this runs on every
/// request, and `Authority`'s parser copies the value.
fn is_authority(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

/// The short answer to a refused request; closes an HTTP/1 connection.
fn refuse(refusal: Refusal, version: Version) -> Response<Body> {
    let (status, body) = match refusal {
        Refusal::Method => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        Refusal::Host => (StatusCode::BAD_REQUEST, "bad request\n"),
        Refusal::Head => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        ),
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Refusal::Method = refusal {
        headers.insert(header::ALLOW, ALLOW);
    }
    // HTTP/2 has no `Connection` field (hyper would strip it); a refused
    // stream does not concern the connection's other streams.
    if version < Version::HTTP_2 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
