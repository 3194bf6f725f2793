use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Headers, missing_key_response, too_many_requests};
use crate::{MissingKey, Policy, RateLimited, Report};

/// An HTTP rate limit layer: like [`RateLimitLayer`](crate::RateLimitLayer)
/// in reject mode, but it answers a request over the limit with a 429 itself
/// (so the inner service's error type is unchanged) and adds the rate limit
/// fields to admitted responses. See the [module docs](super) for an example.
pub struct HttpRateLimitLayer<P> {
    policy: Arc<P>,
    headers: Headers,
}

impl<P> HttpRateLimitLayer<P> {
    /// A layer enforcing `policy`, with [`Headers::default`].
    pub fn new(policy: P) -> Self {
        Self {
            policy: Arc::new(policy),
            headers: Headers::default(),
        }
    }

    /// Sets which header fields are sent.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The shared policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<P> Clone for HttpRateLimitLayer<P> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            headers: self.headers,
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for HttpRateLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimitLayer")
            .field("policy", &self.policy)
            .field("headers", &self.headers)
            .finish()
    }
}

impl<S, P> Layer<S> for HttpRateLimitLayer<P> {
    type Service = HttpRateLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRateLimit {
            inner,
            policy: self.policy.clone(),
            headers: self.headers,
        }
    }
}

/// The service built by [`HttpRateLimitLayer`].
pub struct HttpRateLimit<S, P> {
    inner: S,
    policy: Arc<P>,
    headers: Headers,
}

impl<S, P> HttpRateLimit<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for HttpRateLimit<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            headers: self.headers,
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for HttpRateLimit<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for HttpRateLimit<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: Policy<Request<ReqBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (verdict, _taken) = self.policy.check(&req);
        let headers = self.headers;
        if let Some(missing) = verdict.missing_key {
            return ResponseFuture {
                kind: Kind::MissingKey {
                    missing: Some(missing),
                },
            };
        }
        if let Some(limited) = verdict.error() {
            // The 429 is built when polled: a RateLimited is much smaller
            // than a response, and the future is moved around by callers.
            return ResponseFuture {
                kind: Kind::Limited {
                    limited: Some((limited, headers)),
                },
            };
        }
        let report = verdict.tightest.filter(|_| headers.on_admitted);
        ResponseFuture {
            kind: Kind::Called {
                future: self.inner.call(req),
                // Inline: no allocation per admitted request.
                report: report.map(|report| (report, headers)),
            },
        }
    }
}

pin_project! {
    /// The response future of [`HttpRateLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F, report: Option<(Report, Headers)> },
        Limited { limited: Option<(RateLimited, Headers)> },
        MissingKey { missing: Option<MissingKey> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, report } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some((report, headers)) = report.take() {
                    headers.apply(&report, response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Limited { limited } => {
                let (limited, headers) = limited
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(too_many_requests(&limited, &headers)))
            }
            KindProj::MissingKey { missing } => {
                let missing = missing
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(missing_key_response(&missing)))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
