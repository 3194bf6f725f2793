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

use super::{ClassifyEnd, ClassifyResponse, HttpClassifier, HttpEnd, grpc_rejected_response};
use crate::BoxError;
use crate::breaker::{Breaker, Permit};
use crate::classify::Outcome;
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
/// delegates, and a rejected call resolves to a [`Rejected`] error, except
/// a gRPC call (`content-type: application/grpc...`), which is answered with
/// a trailers-only `UNAVAILABLE` ([`grpc_rejected_response`]): gRPC servers
/// such as tonic turn a layer's error into a reset stream, not a status.
///
/// With [`GrpcClassifier`](super::GrpcClassifier) as the classifier, the
/// outcome is the call's `grpc-status`: from the headers of a trailers-only
/// response at once, else from the trailers when the body ends.
#[derive(Debug, Clone)]
pub struct BodyEndLayer<C = HttpClassifier> {
    breaker: Breaker,
    classifier: C,
}

impl BodyEndLayer {
    /// A layer around `breaker`, with [`HttpClassifier::server_errors`].
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: HttpClassifier::default(),
        }
    }
}

impl<C> BodyEndLayer<C> {
    /// How responses are classified: an [`HttpClassifier`] (which statuses
    /// fail at the head) or a [`GrpcClassifier`](super::GrpcClassifier).
    pub fn classifier<C2: ClassifyResponse + Clone>(self, classifier: C2) -> BodyEndLayer<C2> {
        BodyEndLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for BodyEndLayer<C> {
    type Service = BodyEnd<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyEnd {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`BodyEndLayer`].
#[derive(Debug, Clone)]
pub struct BodyEnd<S, C = HttpClassifier> {
    inner: S,
    breaker: Breaker,
    classifier: C,
}

impl<S, C> BodyEnd<S, C> {
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

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for BodyEnd<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    C: ClassifyResponse + Clone,
{
    type Response = Response<BreakerBody<ResBody, C::End>>;
    type Error = BoxError;
    type Future = BodyEndFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let kind = match self.breaker.try_acquire() {
            Ok(permit) => Kind::Called {
                future: self.inner.call(req),
                permit: Some(permit),
                classifier: self.classifier.clone(),
            },
            Err(rejected) => Kind::Rejected {
                rejected: Some((rejected, palisade_core::grpc::is_grpc(req.headers()))),
            },
        };
        BodyEndFuture { kind }
    }
}

pin_project! {
    /// The response future of [`BodyEnd`].
    pub struct BodyEndFuture<F, C = HttpClassifier> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called { #[pin] future: F, permit: Option<Permit>, classifier: C },
        // The rejection and whether the request is gRPC.
        Rejected { rejected: Option<(Rejected, bool)> },
    }
}

impl<F, C> fmt::Debug for BodyEndFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyEndFuture").finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for BodyEndFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    C: ClassifyResponse,
{
    type Output = Result<Response<BreakerBody<B, C::End>>, BoxError>;

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
                        let pending =
                            match classifier.classify_head(response.status(), response.headers()) {
                                Ok(outcome) => {
                                    record(permit, outcome);
                                    None
                                }
                                Err(end) if response.body().is_end_stream() => {
                                    record(permit, end.classify_end(None));
                                    None
                                }
                                Err(end) => permit.map(|permit| (permit, end)),
                            };
                        Poll::Ready(Ok(response.map(|inner| BreakerBody {
                            inner: Some(inner),
                            pending,
                        })))
                    }
                }
            }
            KindProj::Rejected { rejected } => {
                let (rejected, grpc) = rejected
                    .take()
                    .expect("BodyEndFuture polled after completion");
                if grpc {
                    return Poll::Ready(Ok(grpc_rejected_response(&rejected)));
                }
                Poll::Ready(Err(rejected.into()))
            }
        }
    }
}

fn record(permit: Option<Permit>, outcome: Outcome) {
    if let Some(permit) = permit {
        permit.record(outcome);
    }
}

pin_project! {
    /// A response body that reports its call's outcome when it ends; see
    /// [`BodyEndLayer`]. Empty (no inner body) for a gRPC rejection.
    pub struct BreakerBody<B, E = HttpEnd> {
        #[pin]
        inner: Option<B>,
        pending: Option<(Permit, E)>,
    }
}

impl<B, E> BreakerBody<B, E> {
    /// The wrapped body (`None` for the empty body of a gRPC rejection).
    pub fn into_inner(self) -> Option<B> {
        self.inner
    }
}

impl<B, E> Default for BreakerBody<B, E> {
    /// An empty body, decided already.
    fn default() -> Self {
        Self {
            inner: None,
            pending: None,
        }
    }
}

impl<B: fmt::Debug, E> fmt::Debug for BreakerBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBody")
            .field("inner", &self.inner)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<B: Body, E: ClassifyEnd> Body for BreakerBody<B, E> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(inner.as_mut().poll_frame(cx));
        let outcome = match &frame {
            None => this
                .pending
                .take()
                .map(|(p, end)| (p, end.classify_end(None))),
            Some(Err(_)) => this.pending.take().map(|(p, _)| (p, Outcome::Failure)),
            // Trailers are the last frame: they carry a gRPC call's status.
            Some(Ok(frame)) if frame.is_trailers() => this
                .pending
                .take()
                .map(|(p, end)| (p, end.classify_end(frame.trailers_ref()))),
            Some(Ok(_)) if inner.is_end_stream() => this
                .pending
                .take()
                .map(|(p, end)| (p, end.classify_end(None))),
            Some(Ok(_)) => None,
        };
        if let Some((permit, outcome)) = outcome {
            record(Some(permit), outcome);
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
