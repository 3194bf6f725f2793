//! The scatter service and its builder.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use metrics::Counter;
use tower::BoxError;
use tower_service::Service;

use super::future::{BranchFuture, ScatterFuture};
use super::gather::{Gather, Strategy};
use crate::error::ConfigError;
use crate::metric_names;

/// Sends a clone of each request to every service of a fixed set and
/// gathers their results with a [`Gather`] strategy.
///
/// Built by [`Scatter::builder`]. See the [module docs](crate::scatter).
pub struct Scatter<S, G> {
    services: Vec<S>,
    shared: Arc<Shared<G>>,
}

/// What every clone of one scatter service shares.
pub(crate) struct Shared<G> {
    pub(crate) gather: G,
    pub(crate) ready_timeout: Option<Duration>,
    pub(crate) branch_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) metrics: ScatterMetrics,
}

/// Counter handles, registered once when the service is built so the call
/// path only increments.
pub(crate) struct ScatterMetrics {
    pub(crate) calls_ok: Counter,
    pub(crate) calls_err: Counter,
    pub(crate) branch_ok: Counter,
    pub(crate) branch_service: Counter,
    pub(crate) branch_not_ready: Counter,
    pub(crate) branch_timed_out: Counter,
    pub(crate) branch_deadline: Counter,
    pub(crate) branch_cancelled: Counter,
}

impl ScatterMetrics {
    fn new(name: &'static str) -> Self {
        let call = |outcome: &'static str| metrics::counter!(metric_names::SCATTER_CALLS, "scatter" => name, "outcome" => outcome);
        let branch = |outcome: &'static str| metrics::counter!(metric_names::SCATTER_BRANCHES, "scatter" => name, "outcome" => outcome);
        Self {
            calls_ok: call("ok"),
            calls_err: call("error"),
            branch_ok: branch("ok"),
            branch_service: branch("service"),
            branch_not_ready: branch("not_ready"),
            branch_timed_out: branch("timed_out"),
            branch_deadline: branch("deadline"),
            branch_cancelled: branch("cancelled"),
        }
    }
}

/// Builds a [`Scatter`]; see [`Scatter::builder`].
#[derive(Debug)]
pub struct ScatterBuilder<S> {
    services: Vec<S>,
    name: &'static str,
    ready_timeout: Option<Duration>,
    branch_timeout: Option<Duration>,
    deadline: Option<Duration>,
}

impl<S> ScatterBuilder<S> {
    /// The `scatter` metric label (default `"scatter"`).
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// A branch whose service is not ready this long after the call started
    /// fails with [`BranchError::NotReady`](crate::BranchError::NotReady)
    /// for this call and is never called, so one backed-up service cannot
    /// hold the others up. Default: none (a branch waits for readiness as
    /// long as the other limits allow).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// A branch that has not answered this long after the call started
    /// (readiness included) fails with
    /// [`BranchError::TimedOut`](crate::BranchError::TimedOut); the strategy
    /// decides what that means for the call. Default: none.
    pub fn branch_timeout(mut self, timeout: Duration) -> Self {
        self.branch_timeout = Some(timeout);
        self
    }

    /// The whole call, grace window included, ends this long after it
    /// started: every branch still running fails with
    /// [`BranchError::Deadline`](crate::BranchError::Deadline) and the
    /// strategy builds the result from what it has ([`All`](super::All)
    /// returns the partial results; a [`Quorum`](super::Quorum) in its grace
    /// window returns its successes). Default: none.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Builds the service with the gathering strategy `gather`.
    ///
    /// Errors name the field: `services` (the set is empty),
    /// `ready_timeout`, `branch_timeout`, `deadline` (zero), or what the
    /// strategy rejects (`quorum.k` = 0 or more than the services).
    pub fn build<G>(self, gather: G) -> Result<Scatter<S, G>, ConfigError>
    where
        G: Strategy,
    {
        if self.services.is_empty() {
            return Err(crate::error::config_error("services", "must not be empty"));
        }
        for (field, value) in [
            ("ready_timeout", self.ready_timeout),
            ("branch_timeout", self.branch_timeout),
            ("deadline", self.deadline),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(crate::error::config_error(field, "must be greater than 0"));
            }
        }
        gather.validate(self.services.len())?;
        Ok(Scatter {
            shared: Arc::new(Shared {
                gather,
                ready_timeout: self.ready_timeout,
                branch_timeout: self.branch_timeout,
                deadline: self.deadline,
                metrics: ScatterMetrics::new(self.name),
            }),
            services: self.services,
        })
    }
}

impl<S> Scatter<S, ()> {
    /// Starts building a scatter service over `services`, in order: a
    /// branch's index in the results is its position here.
    pub fn builder(services: impl IntoIterator<Item = S>) -> ScatterBuilder<S> {
        ScatterBuilder {
            services: services.into_iter().collect(),
            name: "scatter",
            ready_timeout: None,
            branch_timeout: None,
            deadline: None,
        }
    }
}

impl<S, G> Scatter<S, G> {
    /// The services, in branch order.
    pub fn get_ref(&self) -> &[S] {
        &self.services
    }

    /// The services, mutably.
    pub fn get_mut(&mut self) -> &mut [S] {
        &mut self.services
    }

    /// The services, consuming this one.
    pub fn into_inner(self) -> Vec<S> {
        self.services
    }

    /// The gathering strategy.
    pub fn strategy(&self) -> &G {
        &self.shared.gather
    }
}

impl<S: Clone, G> Clone for Scatter<S, G> {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, G: fmt::Debug> fmt::Debug for Scatter<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scatter")
            .field("services", &self.services)
            .field("gather", &self.shared.gather)
            .field("ready_timeout", &self.shared.ready_timeout)
            .field("branch_timeout", &self.shared.branch_timeout)
            .field("deadline", &self.shared.deadline)
            .finish()
    }
}

impl<S, G, Req> Service<Req> for Scatter<S, G>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    G: Gather<S::Response>,
{
    type Response = G::Output;
    type Error = BoxError;
    type Future = ScatterFuture<S, Req, G>;

    /// Always ready: each call drives every branch's readiness on its own
    /// clone of that branch's service, so an unready branch never blocks the
    /// others (or the caller).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let n = self.services.len();
        let branches = FuturesUnordered::new();
        let mut req = Some(req);
        for (index, svc) in self.services.iter().enumerate() {
            // The last branch takes the request itself: one clone fewer.
            let req = if index + 1 == n {
                req.take().expect("one request per call")
            } else {
                req.as_ref().expect("one request per call").clone()
            };
            branches.push(BranchFuture::new(index, svc.clone(), req));
        }
        ScatterFuture::new(branches, self.shared.clone(), n)
    }
}
