//! The drain service (generic mode).

use std::task::{Context, Poll};

use tower_service::Service;

use crate::BoxError;
use crate::drain::Drain;
use crate::future::ResponseFuture;

/// Counts requests in flight until their response future resolves (or is
/// dropped) and refuses new requests once draining has started.
///
/// Refused requests never reach the inner service; their future fails with
/// [`Draining`](crate::Draining) (boxed). Admission is one
/// atomic `fetch_add`, release one `fetch_sub`.
///
/// See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    drain: Drain,
}

impl<S> DrainService<S> {
    /// Wraps `inner`, counting through `drain`.
    pub fn new(inner: S, drain: Drain) -> Self {
        Self { inner, drain }
    }

    /// The drain this service counts through.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

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

impl<S, Request> Service<Request> for DrainService<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Draining is decided per request in `call`: readiness of the inner
        // service is passed through untouched so no capacity is held here.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.drain.state.acquire() {
            Some(guard) => ResponseFuture::admitted(self.inner.call(request), guard),
            None => ResponseFuture::draining(),
        }
    }
}
