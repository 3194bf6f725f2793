use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::{
    BoxError, Policy, RateLimited,
    future::ResponseFuture,
    layer::{Mode, Shared},
};

/// Enforces a rate limit [`Policy`] on the requests of an inner service.
///
/// Built by [`RateLimitLayer`](crate::RateLimitLayer); see the [crate docs](crate).
/// In reject mode a request over the limit resolves to a
/// [`RateLimited`](crate::RateLimited) error (boxed, like tower's
/// `Overloaded`); in wait mode `poll_ready` holds the caller back instead.
///
/// Cloning a service shares the policy but not a reservation: the clone
/// starts with nothing reserved.
pub struct RateLimit<S, P> {
    inner: S,
    shared: Arc<Shared<P>>,
    max_wait: u64,
    slot: Slot<P>,
}

type Release<P> = (Arc<Shared<P>>, fn(&P));

/// Wait-mode bookkeeping: the cell this service has booked, if any.
struct Slot<P> {
    state: State,
    /// Reused across waits so a waiting service allocates at most once.
    sleep: Option<Pin<Box<Sleep>>>,
    /// How to give the booked cell back; a function pointer because `Drop`
    /// cannot name the request type the policy is bound by.
    release: Option<Release<P>>,
    /// Why the next `call` fails ([`State::Rejected`]).
    rejected: Option<RateLimited>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing booked.
    Idle,
    /// A cell is booked and due when `sleep` fires.
    Waiting,
    /// A cell is booked and due: the next `call` consumes it.
    Reserved,
    /// The policy cannot book (keyed): `call` checks it.
    CheckInCall,
    /// The cell would be due later than `max_wait`: nothing is booked and
    /// the next `call` fails with the rejection.
    Rejected,
}

impl<P> Drop for Slot<P> {
    fn drop(&mut self) {
        if matches!(self.state, State::Waiting | State::Reserved)
            && let Some((shared, release)) = self.release.take()
        {
            release(&shared.policy);
        }
    }
}

// === impl RateLimit ===

impl<S, P> RateLimit<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P>>, max_wait: u64) -> Self {
        Self {
            inner,
            shared,
            max_wait,
            slot: Slot {
                state: State::Idle,
                sleep: None,
                release: None,
                rejected: None,
            },
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter and returns the inner service (a booked cell is
    /// given back).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The shared policy.
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }
}

impl<S, P, Req> Service<Req> for RateLimit<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.mode == Mode::Wait {
            ready!(self.poll_cell(cx));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.slot.state {
            State::Reserved => {
                self.slot.state = State::Idle;
                self.slot.release = None;
                // Keyed members of a tuple could not be booked: decide them
                // now, and give every booked cell back if one rejects.
                let (verdict, _taken) = self.shared.policy.check_unbooked(&req);
                if let Some(refused) = ResponseFuture::for_verdict(&verdict) {
                    self.shared.policy.release();
                    return refused;
                }
                // The cells booked in poll_ready are consumed: no give-back.
                self.shared.policy.commit();
                return ResponseFuture::called(self.inner.call(req));
            }
            State::Rejected => {
                self.slot.state = State::Idle;
                let error = self
                    .slot
                    .rejected
                    .take()
                    .expect("a rejected slot carries its rejection");
                return ResponseFuture::limited(error);
            }
            State::Idle | State::Waiting if self.shared.mode == Mode::Wait => {
                panic!("RateLimit::call without poll_ready returning Ready first (wait mode)")
            }
            State::CheckInCall => self.slot.state = State::Idle,
            _ => {}
        }
        let (verdict, _taken) = self.shared.policy.check(&req);
        match ResponseFuture::for_verdict(&verdict) {
            Some(refused) => refused,
            None => ResponseFuture::called(self.inner.call(req)),
        }
    }
}

impl<S, P> RateLimit<S, P> {
    /// Wait mode: books a cell (once) and waits until it is due.
    fn poll_cell<Req>(&mut self, cx: &mut Context<'_>) -> Poll<()>
    where
        P: Policy<Req>,
    {
        loop {
            match self.slot.state {
                State::Reserved | State::CheckInCall | State::Rejected => {
                    return Poll::Ready(());
                }
                State::Idle => match self.shared.policy.reserve(self.max_wait) {
                    None => self.slot.state = State::CheckInCall,
                    Some(Err(verdict)) => {
                        self.slot.rejected = verdict.error();
                        self.slot.state = if self.slot.rejected.is_some() {
                            State::Rejected
                        } else {
                            State::CheckInCall
                        };
                    }
                    Some(Ok(wait)) => {
                        self.slot.release = Some((self.shared.clone(), |p: &P| p.release()));
                        if wait == 0 {
                            self.slot.state = State::Reserved;
                        } else {
                            let deadline = Instant::now() + Duration::from_nanos(wait);
                            match &mut self.slot.sleep {
                                Some(sleep) => sleep.as_mut().reset(deadline),
                                None => {
                                    self.slot.sleep =
                                        Some(Box::pin(tokio::time::sleep_until(deadline)))
                                }
                            }
                            self.slot.state = State::Waiting;
                        }
                    }
                },
                State::Waiting => {
                    let sleep = self
                        .slot
                        .sleep
                        .as_mut()
                        .expect("a waiting slot has a timer");
                    ready!(sleep.as_mut().poll(cx));
                    self.slot.state = State::Reserved;
                }
            }
        }
    }
}

impl<S: Clone, P> Clone for RateLimit<S, P> {
    /// The clone shares the policy but starts with nothing reserved.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone(), self.max_wait)
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for RateLimit<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .field("mode", &self.shared.mode)
            .field("state", &self.slot.state)
            .finish()
    }
}
