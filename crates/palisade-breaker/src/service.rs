//! The tower service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower_service::Service;

use crate::BoxError;
use crate::breaker::{Breaker, Permit};
use crate::classify::Classify;
use crate::future::ResponseFuture;

/// How `poll_ready` of [`CircuitBreaker`] behaves while the breaker rejects
/// calls.
///
/// See `docs/circuit-breaker.md` ("Fail fast or wait") for when to use which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadyMode {
    /// `poll_ready` only delegates to the inner service; a rejected `call`
    /// resolves at once to a [`Rejected`](crate::Rejected) error. The right
    /// mode in front of a single upstream: the caller gets an answer
    /// (a 503) in microseconds.
    #[default]
    FailFast,
    /// `poll_ready` returns `Pending` while the breaker would reject, and
    /// wakes when it may admit again (the wait elapsed, a probe slot freed,
    /// the handle changed the state). A half-open probe slot is reserved in
    /// `poll_ready` and consumed by `call`. For endpoints inside a
    /// `tower::balance` balancer, which routes around unready endpoints.
    /// Needs a tokio runtime with timers.
    WaitWhileOpen,
}

/// A service guarded by a circuit breaker; built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// See the crate docs for an example.
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Breaker,
    classifier: C,
    mode: ReadyMode,
    /// Reserved by `poll_ready` in [`ReadyMode::WaitWhileOpen`], taken by
    /// `call`.
    permit: Option<Permit>,
    wait: Option<Wait>,
}

/// What a service waiting in `poll_ready` is woken by.
struct Wait {
    notified: Pin<Box<OwnedNotified>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: Breaker, classifier: C, mode: ReadyMode) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            mode,
            permit: None,
            wait: None,
        }
    }

    /// The breaker (a handle to read and control its state).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

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

    /// Reserves a permit, or registers to be woken when one may be
    /// available ([`ReadyMode::WaitWhileOpen`]).
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(permit) = self.permit.take() {
                // A reservation is only as good as the state it was made in:
                // a balancer may hold this service ready for a long time, and
                // the breaker may have opened meanwhile.
                if self.breaker.is_current(&permit) {
                    self.permit = Some(permit);
                    return Poll::Ready(());
                }
                permit.discard();
            }
            if self.wait.is_none()
                && self.breaker.is_closed_like()
                && let Ok(permit) = self.breaker.acquire(false)
            {
                self.permit = Some(permit);
                return Poll::Ready(());
            }
            // Register for the breaker's wake-ups before asking again, so a
            // transition between the check and the registration is not lost.
            let breaker = &self.breaker;
            let wait = self.wait.get_or_insert_with(|| Wait {
                notified: Box::pin(breaker.notify().clone().notified_owned()),
                sleep: None,
            });
            wait.notified.as_mut().enable();
            match breaker.acquire(false) {
                Ok(permit) => {
                    self.permit = Some(permit);
                    self.wait = None;
                    return Poll::Ready(());
                }
                Err(rejected) => {
                    match rejected.retry_after() {
                        Some(after) => {
                            let deadline = tokio::time::Instant::now() + after;
                            match &mut wait.sleep {
                                Some(sleep) => sleep.as_mut().reset(deadline),
                                None => {
                                    wait.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)))
                                }
                            }
                        }
                        None => wait.sleep = None,
                    }
                    let notified = wait.notified.as_mut().poll(cx).is_ready();
                    let elapsed = wait
                        .sleep
                        .as_mut()
                        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                    if notified || elapsed {
                        self.wait = None;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// A clone starts without a reserved permit.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
            self.mode,
        )
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("classifier", &self.classifier)
            .field("mode", &self.mode)
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.mode == ReadyMode::WaitWhileOpen && self.poll_permit(cx).is_pending() {
            return Poll::Pending;
        }
        // Never poisoned: readiness is always the inner service's.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.mode {
            ReadyMode::FailFast => self.breaker.try_acquire(),
            ReadyMode::WaitWhileOpen => {
                let permit = self.permit.take().expect(
                    "CircuitBreaker::call without poll_ready returning Ready (the permit is reserved there)",
                );
                if self.breaker.is_current(&permit) {
                    Ok(permit)
                } else {
                    // The state changed between `poll_ready` and `call`: the
                    // call is decided by the state now, never by a stale
                    // reservation.
                    permit.discard();
                    self.breaker.try_acquire()
                }
            }
        };
        match permit {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected, self.classifier.clone()),
        }
    }
}
