//! The layer.

use tower_layer::Layer;

use crate::finish::AtCompletion;
use crate::limiter::Limiter;
use crate::policy::NoPolicy;
use crate::service::AdaptiveLimit;

/// Applies an adaptive concurrency limit to a service: every service it
/// builds (and every clone of them) shares the one [`Limiter`], so a layer
/// applied per connection still limits the whole server.
///
/// `P` reads requests (class, deadline: [`RequestPolicy`](crate::RequestPolicy)),
/// `F` decides where a call ends and how it counts
/// ([`Finish`](crate::Finish)). See the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<P = NoPolicy, F = AtCompletion> {
    limiter: Limiter,
    policy: P,
    finish: F,
}

impl AdaptiveLimitLayer {
    /// A layer over `limiter`: no request policy, a call ends when its
    /// future completes, `Err` is a drop.
    pub fn new(limiter: Limiter) -> Self {
        Self {
            limiter,
            policy: NoPolicy,
            finish: AtCompletion::default(),
        }
    }
}

impl<P, F> AdaptiveLimitLayer<P, F> {
    /// Reads each request's class and deadline with `policy`.
    pub fn policy<P2>(self, policy: P2) -> AdaptiveLimitLayer<P2, F> {
        AdaptiveLimitLayer {
            limiter: self.limiter,
            policy,
            finish: self.finish,
        }
    }

    /// Ends calls with `finish` (e.g. [`AtCompletion`] with your classifier).
    pub fn finish<F2>(self, finish: F2) -> AdaptiveLimitLayer<P, F2> {
        AdaptiveLimitLayer {
            limiter: self.limiter,
            policy: self.policy,
            finish,
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S, P: Clone, F: Clone> Layer<S> for AdaptiveLimitLayer<P, F> {
    type Service = AdaptiveLimit<S, P, F>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(
            inner,
            self.limiter.clone(),
            self.policy.clone(),
            self.finish.clone(),
        )
    }
}
