//! A call's slot held until its response body ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use palisade_core::classify::Outcome;
use pin_project_lite::pin_project;

use super::{DropClassifier, grpc_overloaded_response};
use crate::finish::Finish;
use crate::limiter::Permit;
use crate::{BoxError, Overloaded};

/// Ends an HTTP call when its response **body** ends, so a streaming
/// response holds its slot while it streams.
///
/// - A drop at the head ([`DropClassifier`]: 503, 429, a gRPC overload
///   status, an `Err`) is recorded at once.
/// - A response with an empty body is a success at once.
/// - Otherwise the [`Permit`] travels in the [`LimitBody`]: its last frame
///   records a success (a drop if its trailers carry a gRPC overload
///   status); a body error, or a body dropped before its end (the client
///   left), gives the slot back without a sample.
///
/// A refused gRPC call (the policy's `in_band`) is answered with a
/// trailers-only `UNAVAILABLE` rather than an error: gRPC servers such as
/// tonic turn a layer's error into a reset stream, not a status.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtBodyEnd {
    classifier: DropClassifier,
}

impl<B> Finish<Response<B>> for AtBodyEnd
where
    B: Body + Default,
{
    type Output = Response<LimitBody<B>>;

    fn finish(
        &self,
        result: Result<Response<B>, BoxError>,
        permit: Permit,
    ) -> Result<Self::Output, BoxError> {
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                permit.record(Outcome::Failure);
                return Err(e);
            }
        };
        if self
            .classifier
            .is_drop(response.status(), response.headers())
        {
            permit.record(Outcome::Failure);
            return Ok(response.map(|body| LimitBody::new(body, None)));
        }
        if response.body().is_end_stream() {
            permit.record(Outcome::Success);
            return Ok(response.map(|body| LimitBody::new(body, None)));
        }
        Ok(response.map(|body| LimitBody::new(body, Some(permit))))
    }

    fn refused(&self, error: Overloaded, in_band: bool) -> Result<Self::Output, BoxError> {
        if in_band {
            Ok(grpc_overloaded_response::<B>(&error).map(|body| LimitBody::new(body, None)))
        } else {
            Err(error.into())
        }
    }
}

pin_project! {
    /// A response body that holds its call's slot until it ends.
    #[derive(Debug, Default)]
    pub struct LimitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
        classifier: DropClassifier,
    }
}

impl<B> LimitBody<B> {
    fn new(inner: B, permit: Option<Permit>) -> Self {
        Self {
            inner,
            permit,
            classifier: DropClassifier,
        }
    }

    /// The inner body, consuming this one (its slot is given back without
    /// a sample).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for LimitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(permit) = this.permit.take() {
                    permit.record(Outcome::Success);
                }
            }
            Some(Err(_)) => {
                // A body error says nothing reliable about the upstream's
                // load (the client may have gone): no sample.
                this.permit.take();
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(permit) = this.permit.take()
                {
                    permit.record(if this.classifier.is_grpc_drop(trailers) {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    });
                }
            }
        }
        if inner.is_end_stream()
            && let Some(permit) = this.permit.take()
        {
            permit.record(Outcome::Success);
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
