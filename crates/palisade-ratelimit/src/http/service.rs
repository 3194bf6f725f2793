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

use palisade_core::grpc::{self, Code};

use super::{
    Headers, grpc_missing_key, grpc_rate_limited, missing_key_response, too_many_requests,
};
use crate::{MissingKey, Policy, RateLimited, Report};

/// An HTTP rate limit layer: like [`RateLimitLayer`](crate::RateLimitLayer)
/// in reject mode, but it answers a request over the limit with a 429 itself
/// (so the inner service's error type is unchanged) and adds the rate limit
/// fields to admitted responses. See the [module docs](super) for an example.
///
/// A gRPC request (`content-type: application/grpc...`) over the limit gets
/// a trailers-only gRPC response instead of the 429: `grpc-status`
/// `RESOURCE_EXHAUSTED` (see [`grpc_code`](Self::grpc_code)), a
/// `grpc-message` naming the policy, `grpc-retry-pushback-ms` with the wait,
/// and the same rate limit fields as metadata.
pub struct HttpRateLimitLayer<P> {
    policy: Arc<P>,
    headers: Headers,
    grpc_code: Code,
}

impl<P> HttpRateLimitLayer<P> {
    /// A layer enforcing `policy`, with [`Headers::default`].
    pub fn new(policy: P) -> Self {
        Self {
            policy: Arc::new(policy),
            headers: Headers::default(),
            grpc_code: grpc::RATE_LIMITED,
        }
    }

    /// Sets which header fields are sent.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The `grpc-status` a rate-limited gRPC call gets: `RESOURCE_EXHAUSTED`
    /// by default (what gRPC defines for an exhausted quota; tonic clients
    /// see `Code::ResourceExhausted` and do not retry it by default), or
    /// `UNAVAILABLE` for clients whose retry policy should retry it (Envoy's
    /// `rate_limited_as_resource_exhausted` makes the same choice).
    pub fn grpc_code(mut self, code: Code) -> Self {
        self.grpc_code = code;
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
            grpc_code: self.grpc_code,
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for HttpRateLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimitLayer")
            .field("policy", &self.policy)
            .field("headers", &self.headers)
            .field("grpc_code", &self.grpc_code)
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
            grpc_code: self.grpc_code,
        }
    }
}

/// The service built by [`HttpRateLimitLayer`].
pub struct HttpRateLimit<S, P> {
    inner: S,
    policy: Arc<P>,
    headers: Headers,
    grpc_code: Code,
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
            grpc_code: self.grpc_code,
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
        // Only a refusal looks at the content type: admitted requests pay
        // nothing for gRPC support.
        let grpc_code = || grpc::is_grpc(req.headers()).then_some(self.grpc_code);
        if let Some(missing) = verdict.missing_key {
            return ResponseFuture {
                kind: Kind::MissingKey {
                    missing: Some((missing, grpc_code().is_some())),
                },
            };
        }
        if let Some(limited) = verdict.error() {
            // The 429 is built when polled: a RateLimited is much smaller
            // than a response, and the future is moved around by callers.
            return ResponseFuture {
                kind: Kind::Limited {
                    limited: Some((limited, headers, grpc_code())),
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
        // The gRPC status to answer with, for a gRPC request.
        Limited { limited: Option<(RateLimited, Headers, Option<Code>)> },
        // Whether the request is gRPC.
        MissingKey { missing: Option<(MissingKey, bool)> },
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
                let (limited, headers, grpc) = limited
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(match grpc {
                    Some(code) => grpc_rate_limited(&limited, &headers, code),
                    None => too_many_requests(&limited, &headers),
                }))
            }
            KindProj::MissingKey { missing } => {
                let (missing, grpc) = missing
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(if grpc {
                    grpc_missing_key(&missing)
                } else {
                    missing_key_response(&missing)
                }))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
