//! Response futures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;
use crate::drain::InFlight;
use crate::error::Draining;

pin_project! {
    /// Response future of [`DrainService`](crate::DrainService): holds the
    /// request's in-flight slot until it resolves or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(inner: F, guard: InFlight) -> Self {
        Self {
            inner: Some(inner),
            guard: Some(guard),
        }
    }

    pub(crate) fn draining() -> Self {
        Self {
            inner: None,
            guard: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Draining.into()));
        };
        let output = ready!(inner.poll(cx));
        this.guard.take();
        Poll::Ready(output.map_err(Into::into))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("draining", &self.inner.is_none())
            .field("in_flight", &self.guard.is_some())
            .finish()
    }
}
