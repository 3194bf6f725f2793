//! The service.

use std::task::{Context, Poll, ready};

use tower_service::Service;

use crate::BoxError;
use crate::error::Reason;
use crate::finish::Finish;
use crate::future::ResponseFuture;
use crate::limiter::{Limiter, Slot};
use crate::policy::RequestPolicy;

/// A service under an adaptive concurrency limit; see
/// [`AdaptiveLimitLayer`](crate::AdaptiveLimitLayer).
///
/// `poll_ready` reserves a slot (or, in queue mode, waits for one; or, when
/// the limit is full, readies a refusal, like tower's `LoadShed`); `call`
/// consumes it. A reserved service dropped unused gives its slot back, and a
/// clone starts without one.
#[derive(Debug)]
pub struct AdaptiveLimit<S, P, F> {
    inner: S,
    limiter: Limiter,
    policy: P,
    finish: F,
    slot: Slot,
}

impl<S, P, F> AdaptiveLimit<S, P, F> {
    /// `inner` under `limiter`.
    pub fn new(inner: S, limiter: Limiter, policy: P, finish: F) -> Self {
        Self {
            inner,
            limiter,
            policy,
            finish,
            slot: Slot::Empty,
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one (a reserved slot is given
    /// back).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, F: Clone> Clone for AdaptiveLimit<S, P, F> {
    fn clone(&self) -> Self {
        // A clone starts unreserved: the reservation belongs to the next
        // call of the original.
        Self::new(
            self.inner.clone(),
            self.limiter.clone(),
            self.policy.clone(),
            self.finish.clone(),
        )
    }
}

impl<S, P, F, Req> Service<Req> for AdaptiveLimit<S, P, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
    F: Finish<S::Response> + Clone,
{
    type Response = F::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        ready!(self.slot.poll_reserve(&self.limiter, cx));
        if let Slot::Refused(_) = self.slot {
            // Ready to answer the refusal; the inner service is not asked.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let class = self.policy.class(&req);
        let in_band = self.policy.in_band(&req);
        let reservation = match std::mem::take(&mut self.slot) {
            Slot::Reserved(reservation) => reservation,
            Slot::Refused(reason) => {
                let error = self.limiter.shared().refuse(class, reason);
                return ResponseFuture::refused(error, in_band, self.finish.clone());
            }
            Slot::Empty | Slot::Waiting(_) => {
                panic!("AdaptiveLimit::call without a ready poll_ready (tower's Service contract)")
            }
        };
        if let Some(deadline) = self.policy.deadline(&req, reservation.waited()) {
            let now = tokio::time::Instant::now();
            if deadline <= now {
                let error = reservation.refuse(class, Reason::DeadlineExceeded);
                return ResponseFuture::refused(error, in_band, self.finish.clone());
            }
            self.policy.propagate(&mut req, deadline - now);
        }
        match reservation.admit(class) {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), permit, self.finish.clone()),
            Err(error) => ResponseFuture::refused(error, in_band, self.finish.clone()),
        }
    }
}
