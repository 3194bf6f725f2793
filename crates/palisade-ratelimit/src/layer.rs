use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::RateLimit;

/// What a [`RateLimit`] service does with a request over its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Servers: `poll_ready` only waits for the inner service; a `call` over
    /// the limit fails at once with [`RateLimited`](crate::RateLimited).
    #[default]
    Reject,
    /// Clients and backpressure: `poll_ready` stays `Pending` until a cell is
    /// available; the cell reserved there is consumed by the next `call`.
    /// Applies to unkeyed policies ([`Limiter`](crate::Limiter)); keyed
    /// policies need the request and are still checked in `call`.
    Wait,
}

/// Applies a rate limit [`Policy`](crate::Policy) to a service.
///
/// The policy lives behind one `Arc`: every clone of the layer and every
/// service it builds share it, so a layer applied per connection (as hyper
/// and axum do) still enforces one limit. See the [crate docs](crate) for an
/// example.
pub struct RateLimitLayer<P> {
    pub(crate) shared: Arc<Shared<P>>,
}

pub(crate) struct Shared<P> {
    pub(crate) policy: P,
    pub(crate) mode: Mode,
}

impl<P> RateLimitLayer<P> {
    /// Reject mode: requests over the limit fail with [`RateLimited`](crate::RateLimited).
    pub fn new(policy: P) -> Self {
        Self::with_mode(policy, Mode::Reject)
    }

    /// Wait mode: `poll_ready` waits until a cell is available.
    pub fn wait(policy: P) -> Self {
        Self::with_mode(policy, Mode::Wait)
    }

    /// A layer with the given mode.
    pub fn with_mode(policy: P, mode: Mode) -> Self {
        Self {
            shared: Arc::new(Shared { policy, mode }),
        }
    }

    /// The shared policy (for its key count, for example).
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
}

impl<P> Clone for RateLimitLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for RateLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.shared.policy)
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl<S, P> Layer<S> for RateLimitLayer<P> {
    type Service = RateLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}
