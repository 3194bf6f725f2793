use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::RedisLimiter;
use crate::{
    Decision, KeyExtractor, MissingKey, RateLimited, Report,
    http::{Headers, too_many_requests},
};

type Check = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// An HTTP layer limiting requests through a [`RedisLimiter`] (requires the
/// `http` feature too): keys come from a [`KeyExtractor`] whose key is
/// formatted with `Display`, over-limit requests get a 429, admitted ones the
/// rate limit fields (per [`Headers`]).
///
/// The Redis round trip happens between `call` and the inner service's
/// `call`, so the service takes the inner service that `poll_ready` made
/// ready and leaves a clone in its place (the inner service must be `Clone`),
/// and the check future is boxed (one allocation per checked request, next to
/// the Redis command's own).
///
/// A request the extractor finds no key in is answered `500 Internal Server
/// Error` (logged once, counted in
/// [`MISSING_KEY`](crate::metrics::MISSING_KEY)), as with
/// [`PerKey`](crate::PerKey), unless the layer is built with
/// [`allow_missing`](Self::allow_missing).
pub struct RedisRateLimitLayer<X> {
    limiter: Arc<RedisLimiter>,
    extractor: X,
    headers: Headers,
    missing: Arc<Missing>,
}

/// What a Redis layer does with a request without a key.
#[derive(Debug)]
struct Missing {
    allow: bool,
    warned: AtomicBool,
    counter: metrics::Counter,
}

impl<X> RedisRateLimitLayer<X> {
    /// Limits each request by the key `extractor` returns.
    pub fn new(limiter: Arc<RedisLimiter>, extractor: X) -> Self {
        let missing = Arc::new(Missing {
            allow: false,
            warned: AtomicBool::new(false),
            counter: crate::metrics::missing_key_counter(limiter.name()),
        });
        Self {
            limiter,
            extractor,
            headers: Headers::default(),
            missing,
        }
    }

    /// Admits requests without a key, unlimited by this layer (still
    /// counted); see [`PerKey::allow_missing`](crate::PerKey::allow_missing).
    pub fn allow_missing(mut self) -> Self {
        self.missing = Arc::new(Missing {
            allow: true,
            warned: AtomicBool::new(false),
            counter: self.missing.counter.clone(),
        });
        self
    }

    /// Sets which header fields are sent.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}

impl<X: Clone> Clone for RedisRateLimitLayer<X> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            headers: self.headers,
            missing: self.missing.clone(),
        }
    }
}

impl<X: fmt::Debug> fmt::Debug for RedisRateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .field("headers", &self.headers)
            .finish()
    }
}

impl<S, X: Clone> Layer<S> for RedisRateLimitLayer<X> {
    type Service = RedisRateLimit<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            headers: self.headers,
            missing: self.missing.clone(),
        }
    }
}

/// The service built by [`RedisRateLimitLayer`].
pub struct RedisRateLimit<S, X> {
    inner: S,
    limiter: Arc<RedisLimiter>,
    extractor: X,
    headers: Headers,
    missing: Arc<Missing>,
}

impl<S: Clone, X: Clone> Clone for RedisRateLimit<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            headers: self.headers,
            missing: self.missing.clone(),
        }
    }
}

impl<S: fmt::Debug, X: fmt::Debug> fmt::Debug for RedisRateLimit<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("extractor", &self.extractor)
            .finish()
    }
}

impl<S, X, ReqBody, ResBody> Service<Request<ReqBody>> for RedisRateLimit<S, X>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    X: KeyExtractor<Request<ReqBody>>,
    X::Key: fmt::Display,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(key) = self.extractor.extract(&req) else {
            self.missing.counter.increment(1);
            if self.missing.allow || self.limiter.is_shadow() {
                return ResponseFuture {
                    state: State::Called {
                        future: self.inner.call(req),
                        report: None,
                    },
                };
            }
            let missing = MissingKey {
                policy: self.limiter.name(),
                missing: self.extractor.missing(),
            };
            if !self.missing.warned.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    policy = missing.policy,
                    missing = missing.missing,
                    "rate limit policy found no key in a request; refusing it (logged once per policy)"
                );
            }
            return ResponseFuture {
                state: State::MissingKey {
                    missing: Some(missing),
                },
            };
        };
        // Take the service poll_ready made ready; leave a fresh clone.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let key = key.to_string();
        let check: Check = Box::pin(async move { limiter.check(&key).await });
        ResponseFuture {
            state: State::Checking {
                check,
                // Boxed: the service and the request are large, and this
                // state shares its size with the one every admitted request
                // (and every local-only stack) is in; a Redis round trip
                // dwarfs the allocation.
                waiting: Some(Box::new((inner, req))),
                limiter: self.limiter.clone(),
                headers: self.headers,
            },
        }
    }
}

pin_project! {
    /// The response future of [`RedisRateLimit`].
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Checking {
            check: Check,
            // The service `poll_ready` made ready, and the request for it.
            waiting: Option<Box<(S, Req)>>,
            limiter: Arc<RedisLimiter>,
            headers: Headers,
        },
        Called {
            #[pin]
            future: S::Future,
            report: Option<(Report, Headers)>,
        },
        MissingKey {
            missing: Option<MissingKey>,
        },
    }
}

impl<S, ReqBody, B> Future for ResponseFuture<S, Request<ReqBody>>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Default,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Checking {
                    check,
                    waiting,
                    limiter,
                    headers,
                } => {
                    let decision = ready!(check.as_mut().poll(cx));
                    let report = Report {
                        policy: limiter.name(),
                        quota: limiter.quota(),
                        decision,
                    };
                    // A shadow limiter counted the decision; the client sees nothing.
                    let shadow = limiter.is_shadow();
                    if !decision.allowed() && !shadow {
                        let limited = RateLimited {
                            policy: report.policy,
                            quota: report.quota,
                            decision,
                        };
                        return Poll::Ready(Ok(too_many_requests(&limited, headers)));
                    }
                    let headers = *headers;
                    let (mut inner, req) = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let future = inner.call(req);
                    self.as_mut().project().state.set(State::Called {
                        future,
                        report: (headers.on_admitted && !shadow).then_some((report, headers)),
                    });
                }
                StateProj::Called { future, report } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((report, headers)) = report.take() {
                        headers.apply(&report, response.headers_mut());
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::MissingKey { missing } => {
                    let missing = missing
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(crate::http::missing_key_response(&missing)));
                }
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
