//! The scatter response future and its branches.
//!
//! Every branch is a future in one `FuturesUnordered` owned by the response
//! future: a wake-up polls only the branches that were woken, and dropping
//! the response future drops (cancels) every branch. Nothing is spawned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::gather::{Gather, Step};
use super::service::Shared;
use crate::error::BranchError;

pin_project! {
    #[project = StateProj]
    enum BranchState<S, F, Req> {
        // Driving the branch's own service clone to readiness.
        Unready { svc: S, req: Option<Req> },
        Called { #[pin] future: F },
        // Cut by the ready timeout; already recorded as failed.
        Expired,
    }
}

pin_project! {
    /// One branch: readiness of its service clone, then its call.
    pub struct BranchFuture<S, Req>
    where
        S: Service<Req>,
    {
        index: usize,
        #[pin]
        state: BranchState<S, S::Future, Req>,
    }
}

impl<S: Service<Req>, Req> BranchFuture<S, Req> {
    pub(crate) fn new(index: usize, svc: S, req: Req) -> Self {
        Self {
            index,
            state: BranchState::Unready {
                svc,
                req: Some(req),
            },
        }
    }

    /// Cuts the branch if its service is still not ready; true if it was.
    fn expire_if_unready(self: Pin<&mut Self>) -> bool {
        let mut this = self.project();
        if matches!(this.state.as_mut().project(), StateProj::Unready { .. }) {
            this.state.set(BranchState::Expired);
            return true;
        }
        false
    }
}

impl<S, Req> Future for BranchFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    /// `None` for an expired branch (already recorded).
    type Output = (usize, Option<Result<S::Response, BranchError>>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let index = *this.index;
        loop {
            match this.state.as_mut().project() {
                StateProj::Unready { svc, req } => match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let req = req.take().expect("a branch is called once");
                        let future = svc.call(req);
                        this.state.set(BranchState::Called { future });
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready((index, Some(Err(BranchError::Service(e.into())))));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                StateProj::Called { future } => {
                    return future
                        .poll(cx)
                        .map(|r| (index, Some(r.map_err(|e| BranchError::Service(e.into())))));
                }
                StateProj::Expired => return Poll::Ready((index, None)),
            }
        }
    }
}

pin_project! {
    /// Response future of [`Scatter`](super::Scatter). Dropping it cancels
    /// every branch still running.
    pub struct ScatterFuture<S, Req, G>
    where
        S: Service<Req>,
        G: Gather<S::Response>,
    {
        branches: FuturesUnordered<BranchFuture<S, Req>>,
        shared: Arc<Shared<G>>,
        state: Option<G::State>,
        // Which branches were recorded (exactly once each).
        recorded: Vec<bool>,
        remaining: usize,
        // Only read when a limit is configured (reading the clock is not
        // free, least of all under tokio's test clock).
        started: Option<Instant>,
        // Ready timeout still to apply (some branch may be unready).
        ready_pending: bool,
        branch_timeout_pending: bool,
        grace_until: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<S, Req, G> ScatterFuture<S, Req, G>
where
    S: Service<Req>,
    G: Gather<S::Response>,
{
    pub(crate) fn new(
        branches: FuturesUnordered<BranchFuture<S, Req>>,
        shared: Arc<Shared<G>>,
        n: usize,
    ) -> Self {
        Self {
            branches,
            state: Some(shared.gather.begin(n)),
            recorded: vec![false; n],
            remaining: n,
            started: (shared.ready_timeout.is_some()
                || shared.branch_timeout.is_some()
                || shared.deadline.is_some())
            .then(Instant::now),
            ready_pending: shared.ready_timeout.is_some(),
            branch_timeout_pending: shared.branch_timeout.is_some(),
            grace_until: None,
            timer: None,
            shared,
        }
    }
}

impl<S, Req, G> fmt::Debug for ScatterFuture<S, Req, G>
where
    S: Service<Req>,
    G: Gather<S::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScatterFuture")
            .field("branches", &self.recorded.len())
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// What the poll loop should do after handling an event.
enum Next {
    Continue,
    Finish,
}

impl<S, Req, G> Future for ScatterFuture<S, Req, G>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    G: Gather<S::Response>,
{
    type Output = Result<G::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let state = this
            .state
            .as_mut()
            .expect("ScatterFuture polled after completion");
        let mut record = |recorded: &mut Vec<bool>,
                          remaining: &mut usize,
                          grace_until: &mut Option<Instant>,
                          index: usize,
                          result: Result<S::Response, BranchError>|
         -> Next {
            if std::mem::replace(&mut recorded[index], true) {
                return Next::Continue;
            }
            *remaining -= 1;
            let m = &shared.metrics;
            match &result {
                Ok(_) => m.branch_ok.increment(1),
                Err(BranchError::Service(_)) => m.branch_service.increment(1),
                Err(BranchError::NotReady) => m.branch_not_ready.increment(1),
                Err(BranchError::TimedOut) => m.branch_timed_out.increment(1),
                Err(BranchError::Deadline) => m.branch_deadline.increment(1),
            }
            match shared.gather.record(state, index, result) {
                Step::Done => Next::Finish,
                Step::Grace(grace) => {
                    if grace_until.is_none() {
                        *grace_until = Some(Instant::now() + grace);
                    }
                    if *remaining == 0 {
                        Next::Finish
                    } else {
                        Next::Continue
                    }
                }
                Step::Continue if *remaining == 0 => Next::Finish,
                Step::Continue => Next::Continue,
            }
        };

        'events: loop {
            // Branch results first: an answer that is in when a timer fires
            // counts as an answer.
            while let Poll::Ready(Some((index, result))) = this.branches.poll_next_unpin(cx) {
                if let Some(result) = result
                    && let Next::Finish = record(
                        this.recorded,
                        this.remaining,
                        this.grace_until,
                        index,
                        result,
                    )
                {
                    break 'events;
                }
            }

            // The earliest limit still to apply.
            let started = *this.started;
            let at = |limit: Option<std::time::Duration>| Some(started? + limit?);
            let ready_at = if *this.ready_pending {
                at(shared.ready_timeout)
            } else {
                None
            };
            let branch_at = if *this.branch_timeout_pending {
                at(shared.branch_timeout)
            } else {
                None
            };
            let deadline_at = at(shared.deadline);
            let next = [ready_at, branch_at, deadline_at, *this.grace_until]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else {
                return Poll::Pending;
            };
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) => {
                    if timer.deadline() != next {
                        timer.reset(next);
                    }
                }
                None => this.timer.set(Some(tokio::time::sleep_until(next))),
            }
            let timer = this.timer.as_mut().as_pin_mut().expect("just set");
            if timer.poll(cx).is_pending() {
                return Poll::Pending;
            }

            // `next` has passed: apply every limit due by now.
            let now = Instant::now();
            if this.grace_until.is_some_and(|at| at <= now) {
                break 'events;
            }
            if deadline_at.is_some_and(|at| at <= now) {
                for index in 0..this.recorded.len() {
                    if !this.recorded[index]
                        && let Next::Finish = record(
                            this.recorded,
                            this.remaining,
                            this.grace_until,
                            index,
                            Err(BranchError::Deadline),
                        )
                    {
                        break 'events;
                    }
                }
                break 'events;
            }
            if branch_at.is_some_and(|at| at <= now) {
                *this.branch_timeout_pending = false;
                *this.ready_pending = false;
                for index in 0..this.recorded.len() {
                    if !this.recorded[index]
                        && let Next::Finish = record(
                            this.recorded,
                            this.remaining,
                            this.grace_until,
                            index,
                            Err(BranchError::TimedOut),
                        )
                    {
                        break 'events;
                    }
                }
                // Every branch started together, so none is left running.
                this.branches.clear();
                continue;
            }
            if ready_at.is_some_and(|at| at <= now) {
                *this.ready_pending = false;
                let mut expired = Vec::new();
                for branch in Pin::new(&mut *this.branches).iter_pin_mut() {
                    let index = branch.index;
                    if branch.expire_if_unready() {
                        expired.push(index);
                    }
                }
                expired.sort_unstable();
                for index in expired {
                    if let Next::Finish = record(
                        this.recorded,
                        this.remaining,
                        this.grace_until,
                        index,
                        Err(BranchError::NotReady),
                    ) {
                        break 'events;
                    }
                }
            }
        }

        // Cancel whatever still runs, then build the result.
        let cancelled = this.remaining;
        if *cancelled > 0 {
            shared.metrics.branch_cancelled.increment(*cancelled as u64);
        }
        this.branches.clear();
        this.timer.set(None);
        let state = this
            .state
            .take()
            .expect("ScatterFuture polled after completion");
        let result = shared.gather.finish(state);
        match &result {
            Ok(_) => shared.metrics.calls_ok.increment(1),
            Err(_) => shared.metrics.calls_err.increment(1),
        }
        Poll::Ready(result)
    }
}
