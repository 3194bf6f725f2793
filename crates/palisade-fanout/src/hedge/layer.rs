//! The tower layer.

use tower_layer::Layer;

use super::config::HedgeConfig;
use super::policy::DefaultPolicy;
use super::service::Hedge;
use super::state::Hedger;

/// Wraps a service in a [`Hedge`] that sends its extra attempts to the same
/// service (clones of it). Every service this layer builds shares one
/// [`Hedger`]: one latency window, one budget.
///
/// For extra attempts on *other* replicas, build [`Hedge::over`] directly.
/// See the [module docs](crate::hedge) for an example.
#[derive(Debug, Clone)]
pub struct HedgeLayer<P = DefaultPolicy> {
    hedger: Hedger,
    policy: P,
}

impl HedgeLayer {
    /// A layer hedging every request ([`DefaultPolicy`]) by `config`.
    pub fn new(config: HedgeConfig) -> Self {
        Self {
            hedger: Hedger::new(config),
            policy: DefaultPolicy,
        }
    }
}

impl<P> HedgeLayer<P> {
    /// Uses another policy (which requests are hedged, what a result means).
    pub fn policy<P2>(self, policy: P2) -> HedgeLayer<P2> {
        HedgeLayer {
            hedger: self.hedger,
            policy,
        }
    }

    /// The shared state (its [`stats`](Hedger::stats) and delay).
    pub fn hedger(&self) -> &Hedger {
        &self.hedger
    }
}

impl<S: Clone, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::with_hedger(vec![inner], self.hedger.clone(), self.policy.clone())
    }
}
