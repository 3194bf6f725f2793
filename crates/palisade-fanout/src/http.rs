//! HTTP adapters (feature `http`).
//!
//! `http::Request` bodies are streams, read once; fan-out needs the request
//! many times. [`BufferBodyLayer`] reads the body once, up to a cap, into
//! `Bytes` and hands the inner service a `Request<Full<Bytes>>`, which is
//! `Clone` (a clone shares the bytes; only the head is copied). A body over
//! the cap fails with [`PayloadTooLarge`] before the inner service is
//! called; [`payload_too_large`] is the matching `413` response.
//!
//! [`HttpPolicy`] is the hedging policy for HTTP: only GET, HEAD and
//! OPTIONS are hedged, and a 5xx response is a retryable failure (it waits
//! for the other attempts instead of winning).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::hedge::{Outcome, Policy};

// === HttpPolicy ===

/// Hedges GET, HEAD and OPTIONS requests (the methods RFC 9110 defines as
/// idempotent that carry no side effect worth worrying about twice); a 5xx
/// response or an error is retryable, anything else wins.
///
/// PUT and DELETE are idempotent too, but a hedged PUT racing a later write
/// can reorder them; hedge them with your own [`Policy`] if that is safe.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpPolicy;

impl<B, RB, E> Policy<Request<B>, Response<RB>, E> for HttpPolicy {
    fn hedgeable(&self, req: &Request<B>) -> bool {
        is_safe_method(req.method())
    }

    fn classify(&self, result: &Result<Response<RB>, E>) -> Outcome {
        match result {
            Ok(res) if res.status().is_server_error() => Outcome::Retryable,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Retryable,
        }
    }
}

/// GET, HEAD or OPTIONS.
pub fn is_safe_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

// === PayloadTooLarge ===

/// A request body was over the [`BufferBodyLayer`] cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadTooLarge {
    limit: usize,
}

impl PayloadTooLarge {
    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body over the {} byte limit", self.limit)
    }
}

impl std::error::Error for PayloadTooLarge {}

/// `413 Content Too Large` with an empty body.
pub fn payload_too_large<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    res
}

// === BufferBody ===

/// Buffers request bodies up to `limit` bytes; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Bodies up to `limit` bytes are buffered; longer ones are refused
    /// with [`PayloadTooLarge`].
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BufferBodyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with the request; this one keeps a clone.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limit as u64) {
            return BufferBodyFuture {
                state: BufferState::Refused { limit: self.limit },
            };
        }
        let (parts, body) = req.into_parts();
        BufferBodyFuture {
            state: BufferState::Reading {
                collect: Limited::new(body, self.limit).collect(),
                parts: Some(parts),
                svc: Some(svc),
                limit: self.limit,
            },
        }
    }
}

pin_project! {
    #[project = BufferProj]
    enum BufferState<S, B, F>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            svc: Option<S>,
            limit: usize,
        },
        Calling { #[pin] future: F },
        Refused { limit: usize },
    }
}

pin_project! {
    /// Response future of [`BufferBody`].
    pub struct BufferBodyFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: BufferState<S, B, S::Future>,
    }
}

impl<S, B> fmt::Debug for BufferBodyFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBodyFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for BufferBodyFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                BufferProj::Reading {
                    collect,
                    parts,
                    svc,
                    limit,
                } => {
                    let bytes = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) if e.is::<LengthLimitError>() => {
                            return Poll::Ready(Err(PayloadTooLarge { limit: *limit }.into()));
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let parts = parts.take().expect("polled after completion");
                    let mut svc = svc.take().expect("polled after completion");
                    let future = svc.call(Request::from_parts(parts, Full::new(bytes)));
                    this.state.set(BufferState::Calling { future });
                }
                BufferProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                BufferProj::Refused { limit } => {
                    return Poll::Ready(Err(PayloadTooLarge { limit: *limit }.into()));
                }
            }
        }
    }
}
