//! The drain layer (generic mode).

use tower_layer::Layer;

use crate::drain::Drain;
use crate::service::DrainService;

/// Applies [`DrainService`] to a service: counts requests in flight until
/// their response future resolves and refuses new ones with
/// [`Draining`](crate::Draining) once draining starts.
///
/// For HTTP services prefer `http::HttpDrainLayer` (feature `http`), which
/// counts until the response *body* ends and answers with a 503.
///
/// Every service built by the layer (e.g. one per connection) shares the
/// layer's [`Drain`]. See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    drain: Drain,
}

impl DrainLayer {
    /// Creates a layer counting through `drain`.
    pub fn new(drain: Drain) -> Self {
        Self { drain }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService::new(inner, self.drain.clone())
    }
}
