//! HTTP mode (feature `http`): count requests until the response body ends,
//! answer refused requests with `503`, exempt health checks, hand every
//! request a [`DrainToken`].
//!
//! A refused gRPC request (`content-type: application/grpc...`) gets a
//! trailers-only gRPC response instead of the 503: HTTP 200, `grpc-status`
//! `UNAVAILABLE` ([`palisade_core::grpc::DRAINING`]) and a `grpc-message`,
//! which a gRPC client reads as "try another server" (the 503 would reach a
//! tonic client as `UNAVAILABLE` with no message).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::drain::{Drain, DrainState, DrainToken, InFlight};
use crate::error::Error;

/// Default `Retry-After` of a refused request: one second.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Builds the `503 Service Unavailable` a draining server answers with:
/// `Retry-After` in whole seconds rounded up and never 0
/// ([`palisade_core::retry_after_secs`]), and `Connection: close` on
/// HTTP/1.x (HTTP/2 has no such header; the connection's GOAWAY does that
/// job). Useful to map [`Draining`](crate::Draining) from the generic
/// [`DrainLayer`](crate::DrainLayer) in an error handler.
pub fn draining_response<B: Default>(retry_after: Duration, version: Version) -> Response<B> {
    build_draining_response(retry_after_value(retry_after), version)
}

/// The trailers-only gRPC response a draining server answers a gRPC call
/// with: `grpc-status` [`UNAVAILABLE`](palisade_core::grpc::DRAINING),
/// `grpc-message: server is draining`, and no pushback (the client should
/// retry on another connection at once; HTTP/2's GOAWAY closes this one).
pub fn grpc_draining_response<B: Default>() -> Response<B> {
    palisade_core::grpc::trailers_only(palisade_core::grpc::DRAINING, "server is draining", None)
}

fn retry_after_value(retry_after: Duration) -> HeaderValue {
    // The rule all palisade crates share: rounded up, never 0.
    HeaderValue::from(palisade_core::retry_after_secs(retry_after))
}

#[cold]
#[inline(never)]
fn build_draining_response<B: Default>(retry_after: HeaderValue, version: Version) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, retry_after);
    if version <= Version::HTTP_11 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[derive(Debug)]
struct Config {
    exempt: Vec<String>,
    retry_after: HeaderValue,
    request_token: bool,
}

/// Applies [`HttpDrain`]: counts requests until the response body finishes
/// or is dropped, answers requests arriving after drain started with
/// `503` + `Retry-After` + `Connection: close`, lets exempt paths (health
/// checks) through, and inserts a [`DrainToken`] in every request's
/// extensions.
///
/// Every service built by the layer shares its [`Drain`] and configuration
/// (one `Arc`). See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct HttpDrainLayer {
    drain: Drain,
    config: Arc<Config>,
}

/// Builder of [`HttpDrainLayer`]; see [`HttpDrainLayer::builder`].
#[derive(Debug)]
pub struct HttpDrainLayerBuilder {
    drain: Drain,
    exempt: Vec<String>,
    retry_after: Duration,
    request_token: bool,
}

// === impl HttpDrainLayer ===

impl HttpDrainLayer {
    /// A layer with the defaults: no exempt path, `Retry-After: 1`,
    /// request tokens on.
    pub fn new(drain: Drain) -> Self {
        Self::builder(drain)
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a builder.
    pub fn builder(drain: Drain) -> HttpDrainLayerBuilder {
        HttpDrainLayerBuilder {
            drain,
            exempt: Vec::new(),
            retry_after: DEFAULT_RETRY_AFTER,
            request_token: true,
        }
    }

    /// The drain this layer counts through.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }
}

impl<S> Layer<S> for HttpDrainLayer {
    type Service = HttpDrain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpDrain {
            inner,
            state: self.drain.state.clone(),
            config: self.config.clone(),
        }
    }
}

impl HttpDrainLayerBuilder {
    /// Lets requests for exactly this path through even while draining,
    /// uncounted (health checks: they are short and must keep answering).
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.exempt.push(path.into());
        self
    }

    /// `Retry-After` of refused requests, rounded up to whole seconds
    /// (default [`DEFAULT_RETRY_AFTER`]).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Whether to insert a [`DrainToken`] into each request's extensions
    /// (default `true`). It costs the extensions map allocation per request
    /// (the token itself is one pointer); turn it off if no handler watches
    /// it.
    pub fn request_token(mut self, enabled: bool) -> Self {
        self.request_token = enabled;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `exempt` if a path does not start
    /// with `/`, or `retry_after` if it is zero.
    pub fn build(self) -> Result<HttpDrainLayer, Error> {
        if let Some(bad) = self.exempt.iter().find(|p| !p.starts_with('/')) {
            return Err(Error::invalid(
                "exempt",
                format!("path `{bad}` must start with `/`"),
            ));
        }
        if self.retry_after.is_zero() {
            return Err(Error::invalid("retry_after", "must be greater than zero"));
        }
        Ok(HttpDrainLayer {
            drain: self.drain,
            config: Arc::new(Config {
                exempt: self.exempt,
                retry_after: retry_after_value(self.retry_after),
                request_token: self.request_token,
            }),
        })
    }
}

/// The service of [`HttpDrainLayer`]. Its error type is the inner one:
/// refused requests are answered, not failed.
pub struct HttpDrain<S> {
    inner: S,
    state: Arc<DrainState>,
    config: Arc<Config>,
}

// === impl HttpDrain ===

impl<S> HttpDrain<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for HttpDrain<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for HttpDrain<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDrain")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpDrain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The request is only ever moved by value: handing its address to an
        // out-of-line function would force a copy of it on every call.
        let guard = if !self.config.exempt.is_empty()
            && self.config.exempt.iter().any(|p| p == request.uri().path())
        {
            None
        } else {
            match self.state.acquire() {
                Some(guard) => Some(guard),
                None => {
                    let grpc = palisade_core::grpc::is_grpc(request.headers());
                    return ResponseFuture::refused(&self.config, request.version(), grpc);
                }
            }
        };
        // Two call sites, so the request is never copied into a temporary.
        let future = if self.config.request_token {
            self.inner.call(with_token(request, &self.state))
        } else {
            self.inner.call(request)
        };
        ResponseFuture {
            kind: Kind::Admitted { future },
            guard,
        }
    }
}

fn with_token<B>(mut request: Request<B>, state: &Arc<DrainState>) -> Request<B> {
    request
        .extensions_mut()
        .insert(DrainToken::from_state(state));
    request
}

pin_project! {
    /// Response future of [`HttpDrain`]. The request's in-flight slot moves
    /// into the response body when the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        guard: Option<InFlight>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted { #[pin] future: F },
        // The Retry-After value, the HTTP version and whether it is gRPC.
        Refused { response: Option<(HeaderValue, Version, bool)> },
    }
}

impl<F> ResponseFuture<F> {
    #[cold]
    #[inline(never)]
    fn refused(config: &Config, version: Version, grpc: bool) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some((config.retry_after.clone(), version, grpc)),
            },
            guard: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Admitted { future } => {
                let result = ready!(future.poll(cx));
                // On error the slot is released here, with the request.
                let guard = this.guard.take();
                Poll::Ready(result.map(|response| {
                    response.map(|body| DrainBody {
                        inner: Some(body),
                        guard,
                    })
                }))
            }
            KindProj::Refused { response } => {
                let (retry_after, version, grpc) = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(if grpc {
                    grpc_draining_response()
                } else {
                    build_draining_response(retry_after, version)
                }))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("refused", &matches!(self.kind, Kind::Refused { .. }))
            .field("in_flight", &self.guard.is_some())
            .finish()
    }
}

pin_project! {
    /// Response body of [`HttpDrain`]: the request stays counted in flight
    /// until this body has yielded its last frame, failed, or been dropped
    /// (e.g. the client went away mid-stream).
    pub struct DrainBody<B> {
        #[pin]
        inner: Option<B>,
        guard: Option<InFlight>,
    }
}

impl<B> Default for DrainBody<B> {
    /// An empty body (the one of a refused request).
    fn default() -> Self {
        Self {
            inner: None,
            guard: None,
        }
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // End of stream or error: the request is done.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainBody")
            .field("in_flight", &self.guard.is_some())
            .finish()
    }
}
