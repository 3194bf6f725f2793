//! The tower layer.

use tower_layer::Layer;

use crate::breaker::Breaker;
use crate::classify::DefaultClassifier;
use crate::service::{CircuitBreaker, ReadyMode};

/// Wraps services in a [`CircuitBreaker`] that shares one [`Breaker`].
///
/// Every service this layer builds (for instance one per connection) shares
/// the same breaker: the state lives behind one `Arc`. See the crate docs for
/// an example.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Breaker,
    classifier: C,
    mode: ReadyMode,
}

impl CircuitBreakerLayer {
    /// A layer around `breaker`, with the default classifier (`Err` is a
    /// failure) and [`ReadyMode::FailFast`].
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: DefaultClassifier,
            mode: ReadyMode::FailFast,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses another classifier (see [`Classify`](crate::Classify)).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
            mode: self.mode,
        }
    }

    /// Sets the readiness mode.
    pub fn ready_mode(mut self, mode: ReadyMode) -> Self {
        self.mode = mode;
        self
    }

    /// The shared breaker (a handle: clone it to control the breaker).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.mode,
        )
    }
}
