use std::{fmt, sync::Arc, time::Duration};

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
    /// Applies to unkeyed policies ([`Limiter`](crate::Limiter)), alone or
    /// in a tuple (a tuple books a cell of every unkeyed member, or none);
    /// keyed policies need the request and are checked in `call`. A cell due
    /// later than [`max_wait`](RateLimitLayer::max_wait) is not booked: the
    /// next `call` fails with [`RateLimited`](crate::RateLimited) at once.
    Wait,
}

/// The default [`RateLimitLayer::max_wait`]: 5 seconds.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

/// Applies a rate limit [`Policy`](crate::Policy) to a service.
///
/// The policy lives behind one `Arc`: every clone of the layer and every
/// service it builds share it, so a layer applied per connection (as hyper
/// and axum do) still enforces one limit. See the [crate docs](crate) for an
/// example.
pub struct RateLimitLayer<P> {
    pub(crate) shared: Arc<Shared<P>>,
    max_wait: u64,
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
            max_wait: nanos(DEFAULT_MAX_WAIT),
        }
    }

    /// Wait mode: the longest a request may be held back
    /// ([`DEFAULT_MAX_WAIT`] unless set). A request whose cell would be due
    /// later is rejected with [`RateLimited`](crate::RateLimited) instead
    /// (nothing is booked for it), like nginx's `burst` queue: the wait
    /// queue holds at most `max_wait × rate` requests. `Duration::MAX`
    /// waits however long it takes. Ignored in reject mode.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = nanos(max_wait);
        self
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
            max_wait: self.max_wait,
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for RateLimitLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.shared.policy)
            .field("mode", &self.shared.mode)
            .field("max_wait", &Duration::from_nanos(self.max_wait))
            .finish()
    }
}

impl<S, P> Layer<S> for RateLimitLayer<P> {
    type Service = RateLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone(), self.max_wait)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
