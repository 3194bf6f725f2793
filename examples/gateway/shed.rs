//! Layer 3a: the global in-flight cap, `server.max_in_flight`.
//!
//! Every request below the built-in routes holds one slot from readiness
//! until its response head; when none is free the request is shed at once
//! with `503 Service Unavailable` and `Retry-After: 1` ([`Overloaded`])
//! rather than queued, so a flood costs a few atomics per request and the
//! admitted ones keep their latency. Counted in `gateway_shed_total`.
//!
//! Tower discipline: the slot is reserved in `poll_ready` and consumed by
//! the next `call`; a clone starts without one, and dropping the service
//! releases an unused reservation. Differences from tower's
//! `ConcurrencyLimit` + `LoadShed`: one layer, the slots shared by every
//! connection's clone (the layer owns the semaphore), and a typed error the
//! gateway maps to a 503 with `Retry-After`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicUsize, Ordering};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

/// Metric: requests shed by the in-flight cap.
pub const SHED_TOTAL: &str = "gateway_shed_total";

/// The request was shed: `server.max_in_flight` requests were in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many requests in flight (server.max_in_flight)")
    }
}

impl std::error::Error for Overloaded {}

/// The shared slots: a counter, not a semaphore, because nobody waits for
/// a slot (a full gateway sheds), so taking and returning one is one atomic
/// each and never a waiter-list lock.
///
/// Invariant: `in_flight` counts the [`Slot`]s alive plus, transiently, a
/// reservation attempt that is undone at once when it overshoots `max`; so
/// at most `max` slots are ever held.
#[derive(Debug)]
struct Slots {
    in_flight: AtomicUsize,
    max: usize,
}

impl Slots {
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// One request's slot, returned when dropped.
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Layer of [`InFlightLimit`]; clones share one set of slots.
#[derive(Clone)]
pub struct InFlightLimitLayer {
    slots: Arc<Slots>,
    shed: metrics::Counter,
}

impl fmt::Debug for InFlightLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightLimitLayer")
            .field("in_flight", &self.slots.in_flight.load(Ordering::Relaxed))
            .field("max", &self.slots.max)
            .finish()
    }
}

impl InFlightLimitLayer {
    /// At most `max` requests in flight (validated: at least 1).
    pub fn new(max: usize) -> Self {
        metrics::describe_counter!(SHED_TOTAL, "Requests shed by server.max_in_flight (503).");
        Self {
            slots: Arc::new(Slots {
                in_flight: AtomicUsize::new(0),
                max,
            }),
            shed: metrics::counter!(SHED_TOTAL),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            slots: self.slots.clone(),
            shed: self.shed.clone(),
            reserved: None,
        }
    }
}

/// See the module docs.
pub struct InFlightLimit<S> {
    inner: S,
    slots: Arc<Slots>,
    shed: metrics::Counter,
    /// What `poll_ready` decided for the next `call`: a slot, or `None`
    /// inside `Some` when the request is to be shed.
    reserved: Option<Option<Slot>>,
}

impl<S: fmt::Debug> fmt::Debug for InFlightLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightLimit")
            .field("inner", &self.inner)
            .field("reserved", &self.reserved.is_some())
            .finish()
    }
}

impl<S: Clone> Clone for InFlightLimit<S> {
    fn clone(&self) -> Self {
        // A clone starts without the original's reservation.
        Self {
            inner: self.inner.clone(),
            slots: self.slots.clone(),
            shed: self.shed.clone(),
            reserved: None,
        }
    }
}

impl<S, R> Service<R> for InFlightLimit<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.reserved.is_none() {
            self.reserved = Some(self.slots.try_take());
        }
        if matches!(self.reserved, Some(None)) {
            // Shedding: ready at once, `call` answers 503 without the inner
            // service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self
            .reserved
            .take()
            .expect("InFlightLimit::call without poll_ready")
        {
            Some(slot) => InFlightFuture::Admitted {
                inner: self.inner.call(req),
                _slot: slot,
            },
            None => {
                self.shed.increment(1);
                InFlightFuture::Shed
            }
        }
    }
}

pin_project! {
    /// Response future of [`InFlightLimit`]; holds the slot until the
    /// response head.
    #[project = InFlightProj]
    pub enum InFlightFuture<F> {
        /// Admitted.
        Admitted { #[pin] inner: F, _slot: Slot },
        /// Shed.
        Shed,
    }
}

impl<F> fmt::Debug for InFlightFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Admitted { .. } => "InFlightFuture::Admitted",
            Self::Shed => "InFlightFuture::Shed",
        })
    }
}

impl<F, T, E> Future for InFlightFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InFlightProj::Admitted { inner, .. } => inner.poll(cx).map_err(Into::into),
            InFlightProj::Shed => Poll::Ready(Err(Overloaded.into())),
        }
    }
}
