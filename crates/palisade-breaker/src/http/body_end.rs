//! Classification at the end of the response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::HttpClassifier;
use crate::BoxError;
use crate::breaker::{Breaker, Permit};
use crate::error::Rejected;

/// Like [`CircuitBreakerLayer`](crate::CircuitBreakerLayer) with an
/// [`HttpClassifier`], but a response whose status is a success is decided
/// when its **body** ends: a body that fails mid-stream (the upstream reset
/// the connection halfway through a 200) counts as a failure, a body read to
/// its end as a success.
///
/// - A failure status (5xx by default) or an `Err` is a failure at once.
/// - A success status with an empty body (`is_end_stream`) is a success at
///   once.
/// - Otherwise the call's permit travels in the [`BreakerBody`]: the last
///   frame records a success, an error frame a failure; a body dropped
///   before its end (the client went away) counts as cancelled, neither.
///
/// Slow-call detection, when on, measures until the body ends. Readiness is
/// [`ReadyMode::FailFast`](crate::ReadyMode::FailFast): `poll_ready` only
/// delegates, and a rejected call resolves to a [`Rejected`] error.
#[derive(Debug, Clone)]
pub struct BodyEndLayer {
    breaker: Breaker,
    classifier: HttpClassifier,
}

impl BodyEndLayer {
    /// A layer around `breaker`, with [`HttpClassifier::server_errors`].
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: HttpClassifier::default(),
        }
    }

    /// Which statuses are failures at the head.
    pub fn classifier(mut self, classifier: HttpClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S> Layer<S> for BodyEndLayer {
    type Service = BodyEnd<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyEnd {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier,
        }
    }
}

/// The service of [`BodyEndLayer`].
#[derive(Debug, Clone)]
pub struct BodyEnd<S> {
    inner: S,
    breaker: Breaker,
    classifier: HttpClassifier,
}

impl<S> BodyEnd<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BodyEnd<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
{
    type Response = Response<BreakerBody<ResBody>>;
    type Error = BoxError;
    type Future = BodyEndFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let kind = match self.breaker.try_acquire() {
            Ok(permit) => Kind::Called {
                future: self.inner.call(req),
                permit: Some(permit),
                classifier: self.classifier,
            },
            Err(rejected) => Kind::Rejected {
                rejected: Some(rejected),
            },
        };
        BodyEndFuture { kind }
    }
}

pin_project! {
    /// The response future of [`BodyEnd`].
    pub struct BodyEndFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F, permit: Option<Permit>, classifier: HttpClassifier },
        Rejected { rejected: Option<Rejected> },
    }
}

impl<F> fmt::Debug for BodyEndFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyEndFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for BodyEndFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<BreakerBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                let permit = permit.take();
                match result {
                    Err(error) => {
                        if let Some(permit) = permit {
                            permit.failure();
                        }
                        Poll::Ready(Err(error.into()))
                    }
                    Ok(response) => {
                        let permit = if classifier.is_failure(response.status()) {
                            if let Some(permit) = permit {
                                permit.failure();
                            }
                            None
                        } else if response.body().is_end_stream() {
                            if let Some(permit) = permit {
                                permit.success();
                            }
                            None
                        } else {
                            permit
                        };
                        Poll::Ready(Ok(response.map(|inner| BreakerBody { inner, permit })))
                    }
                }
            }
            KindProj::Rejected { rejected } => {
                let rejected = rejected
                    .take()
                    .expect("BodyEndFuture polled after completion");
                Poll::Ready(Err(rejected.into()))
            }
        }
    }
}

pin_project! {
    /// A response body that reports its call's outcome when it ends; see
    /// [`BodyEndLayer`].
    pub struct BreakerBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> BreakerBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for BreakerBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBody")
            .field("inner", &self.inner)
            .field("pending", &self.permit.is_some())
            .finish()
    }
}

impl<B: Body> Body for BreakerBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(permit) = this.permit.take() {
                    permit.success();
                }
            }
            Some(Err(_)) => {
                if let Some(permit) = this.permit.take() {
                    permit.failure();
                }
            }
            Some(Ok(_)) => {
                if this.inner.is_end_stream()
                    && let Some(permit) = this.permit.take()
                {
                    permit.success();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
