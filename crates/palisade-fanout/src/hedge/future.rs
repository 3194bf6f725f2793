//! The hedged response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::config::Delay;
use super::policy::{Outcome, Policy};
use super::state::{Inner, Timing};

pin_project! {
    #[project = AttemptProj]
    enum AttemptState<S, F, Req> {
        Unready { svc: S, req: Option<Req> },
        Called { #[pin] future: F },
    }
}

pin_project! {
    /// One extra attempt: readiness of its replica clone, then the call.
    /// Its [`Timing`] records the latency when the attempt completes or is
    /// dropped.
    struct Attempt<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: AttemptState<S, S::Future, Req>,
        timing: Option<Timing>,
    }
}

impl<S: Service<Req>, Req> Future for Attempt<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AttemptProj::Unready { svc, req } => match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let future = svc.call(req.take().expect("an attempt is called once"));
                        this.state.set(AttemptState::Called { future });
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                AttemptProj::Called { future } => return future.poll(cx),
            }
        }
    }
}

pin_project! {
    /// Response future of [`Hedge`](super::Hedge). Dropping it cancels every
    /// attempt (their elapsed time is recorded as their latency).
    #[project = HedgeFutureProj]
    pub struct HedgeFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        primary_timing: Option<Timing>,
        hedges: Option<FuturesUnordered<Attempt<S, Req>>>,
        // Attempts sent so far (the primary included) and still running.
        attempts: usize,
        running: usize,
        primary_index: usize,
        // The request kept for hedges; `None` once no more may be sent.
        req: Option<Req>,
        delay: Duration,
        #[pin]
        timer: Option<Sleep>,
        last_failure: Option<Result<S::Response, S::Error>>,
        template: Arc<[S]>,
        hedger: Arc<Inner>,
        policy: P,
    }
}

impl<S, Req, P> HedgeFuture<S, Req, P>
where
    S: Service<Req> + Clone,
    Req: Clone,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        primary: S::Future,
        primary_timing: Option<Timing>,
        primary_index: usize,
        req: Option<Req>,
        schedule: Option<(Instant, Duration)>,
        template: Arc<[S]>,
        hedger: Arc<Inner>,
        policy: P,
    ) -> Self {
        let (timer, delay) = match schedule {
            Some((start, delay)) => (Some(tokio::time::sleep_until(start + delay)), delay),
            None => (None, Duration::ZERO),
        };
        Self {
            primary: Some(primary),
            primary_timing,
            hedges: None,
            attempts: 1,
            running: 1,
            primary_index,
            req,
            delay,
            timer,
            last_failure: None,
            template,
            hedger,
            policy,
        }
    }
}

impl<S, Req, P> fmt::Debug for HedgeFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("attempts", &self.attempts)
            .field("running", &self.running)
            .field("primary_index", &self.primary_index)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P> Future for HedgeFuture<S, Req, P>
where
    S: Service<Req> + Clone,
    Req: Clone,
    P: Policy<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // The primary.
            if let Some(primary) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = primary.poll(cx)
            {
                this.primary.set(None);
                // Dropping the timing records the primary's latency.
                *this.primary_timing = None;
                *this.running -= 1;
                match this.policy.classify(&result) {
                    Outcome::Success | Outcome::Fatal => {
                        // Cancel the hedges (their timings record them).
                        *this.hedges = None;
                        this.timer.set(None);
                        return Poll::Ready(result);
                    }
                    Outcome::Retryable => *this.last_failure = Some(result),
                }
            }

            // The hedges.
            if let Some(hedges) = this.hedges.as_mut() {
                while let Poll::Ready(Some(result)) = hedges.poll_next_unpin(cx) {
                    *this.running -= 1;
                    match this.policy.classify(&result) {
                        outcome @ (Outcome::Success | Outcome::Fatal) => {
                            if outcome == Outcome::Success {
                                this.hedger.on_hedge_won();
                            }
                            this.primary.set(None);
                            *this.primary_timing = None;
                            *this.hedges = None;
                            this.timer.set(None);
                            return Poll::Ready(result);
                        }
                        Outcome::Retryable => *this.last_failure = Some(result),
                    }
                }
            }

            // Every attempt so far failed: send the next at once if allowed,
            // else the last failure is the answer.
            if *this.running == 0 {
                if send_hedge(&mut this, Instant::now()) {
                    continue;
                }
                this.timer.set(None);
                return Poll::Ready(
                    this.last_failure
                        .take()
                        .expect("no attempt running means one failed"),
                );
            }

            // The hedge timer.
            let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            if timer.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let sent = send_hedge(&mut this, now);
            if sent && *this.attempts < this.hedger.config.max_attempts && this.req.is_some() {
                let next = now + *this.delay;
                this.timer
                    .as_mut()
                    .as_pin_mut()
                    .expect("the timer just fired")
                    .reset(next);
            } else {
                this.timer.set(None);
            }
        }
    }
}

/// Sends the next attempt if one is left and the budget grants it; true if
/// it was sent. A refusal ends hedging for this request.
fn send_hedge<S, Req, P>(this: &mut HedgeFutureProj<'_, S, Req, P>, now: Instant) -> bool
where
    S: Service<Req> + Clone,
    Req: Clone,
{
    let max = this.hedger.config.max_attempts;
    if *this.attempts >= max || this.req.is_none() {
        return false;
    }
    if !this.hedger.try_hedge(now) {
        *this.req = None;
        return false;
    }
    let n = this.template.len();
    let index = (*this.primary_index + *this.attempts) % n;
    let req = if *this.attempts + 1 == max {
        this.req.take().expect("checked above")
    } else {
        this.req.as_ref().expect("checked above").clone()
    };
    let timing = matches!(this.hedger.config.delay, Delay::Percentile(_))
        .then(|| Timing::start(this.hedger.clone(), now));
    let attempt = Attempt {
        state: AttemptState::Unready {
            svc: this.template[index].clone(),
            req: Some(req),
        },
        timing,
    };
    this.hedges
        .get_or_insert_with(FuturesUnordered::new)
        .push(attempt);
    *this.attempts += 1;
    *this.running += 1;
    true
}
