//! The hedged service.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::config::{Delay, HedgeConfig};
use super::future::HedgeFuture;
use super::policy::{DefaultPolicy, Policy};
use super::state::{Hedger, Timing};

/// A service that sends extra attempts of slow requests; built by
/// [`HedgeLayer`](super::HedgeLayer) (extra attempts to the same service) or
/// [`Hedge::over`] (to other replicas).
///
/// See the [module docs](crate::hedge).
pub struct Hedge<S, P = DefaultPolicy> {
    /// Primaries are called on these (readiness reserved by `poll_ready`).
    replicas: Vec<S>,
    /// Hedges are sent on fresh clones of these, driven to readiness by the
    /// response future so a hedge never waits on the caller.
    template: Arc<[S]>,
    hedger: Hedger,
    policy: P,
    /// The replica chosen for the next primary, and whether `poll_ready`
    /// found it ready (the reservation `call` consumes).
    chosen: Option<(usize, bool)>,
}

impl<S: Clone> Hedge<S> {
    /// Hedges across `replicas`: each request's primary goes to the next
    /// replica in turn, its hedges to the replicas after it. Panics on an
    /// empty set (a programming error, not configuration).
    pub fn over(replicas: impl IntoIterator<Item = S>, config: HedgeConfig) -> Self {
        Self::with_hedger(
            replicas.into_iter().collect(),
            Hedger::new(config),
            DefaultPolicy,
        )
    }
}

impl<S: Clone, P> Hedge<S, P> {
    pub(crate) fn with_hedger(replicas: Vec<S>, hedger: Hedger, policy: P) -> Self {
        assert!(!replicas.is_empty(), "Hedge needs at least one replica");
        Self {
            template: replicas.iter().cloned().collect(),
            replicas,
            hedger,
            policy,
            chosen: None,
        }
    }

    /// Uses another policy.
    pub fn policy<P2>(self, policy: P2) -> Hedge<S, P2> {
        Hedge {
            replicas: self.replicas,
            template: self.template,
            hedger: self.hedger,
            policy,
            chosen: None,
        }
    }
}

impl<S, P> Hedge<S, P> {
    /// The shared state (stats, current delay).
    pub fn hedger(&self) -> &Hedger {
        &self.hedger
    }

    /// The replicas.
    pub fn get_ref(&self) -> &[S] {
        &self.replicas
    }

    /// The replicas, consuming this service.
    pub fn into_inner(self) -> Vec<S> {
        self.replicas
    }
}

impl<S: Clone, P: Clone> Clone for Hedge<S, P> {
    /// A clone starts without a reserved replica.
    fn clone(&self) -> Self {
        Self {
            replicas: self.replicas.clone(),
            template: self.template.clone(),
            hedger: self.hedger.clone(),
            policy: self.policy.clone(),
            chosen: None,
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for Hedge<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("replicas", &self.replicas)
            .field("hedger", &self.hedger)
            .field("policy", &self.policy)
            .field("chosen", &self.chosen)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
    Req: Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HedgeFuture<S, Req, P>;

    /// Ready when the replica next in turn, or failing that any replica
    /// after it, is ready: one backed-up replica does not hold the primaries
    /// of the others.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let n = self.replicas.len();
        let (first, ready) = *self.chosen.get_or_insert_with(|| {
            let i = if n == 1 {
                0
            } else {
                // Round robin; Relaxed: the cursor orders nothing else.
                self.hedger.inner.cursor.fetch_add(1, Ordering::Relaxed) % n
            };
            (i, false)
        });
        if ready {
            return Poll::Ready(Ok(()));
        }
        for k in 0..n {
            let index = (first + k) % n;
            match self.replicas[index].poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    self.chosen = Some((index, true));
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => {
                    self.chosen = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (index, ready) = self.chosen.take().expect(
            "Hedge::call without poll_ready returning Ready (the replica is reserved there)",
        );
        assert!(ready, "Hedge::call without poll_ready returning Ready");
        let inner = &self.hedger.inner;
        let now = Instant::now();
        inner.on_primary(now);
        let delay = if self.policy.hedgeable(&req) {
            inner.delay(now)
        } else {
            None
        };
        // Keep a copy only when a hedge may be sent.
        let kept = delay.map(|_| req.clone());
        let timing = matches!(inner.config.delay, Delay::Percentile(_))
            .then(|| Timing::start(inner.clone(), now));
        let primary = self.replicas[index].call(req);
        HedgeFuture::new(
            primary,
            timing,
            index,
            kept,
            delay.map(|d| (now, d)),
            self.template.clone(),
            self.hedger.inner.clone(),
            self.policy.clone(),
        )
    }
}
