//! The tower layer.

use std::fmt;
use std::sync::{Arc, Weak};

use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{BatchLayerBuilder, Settings};
use crate::handle::{BatchHandle, Control, Registry};
use crate::service::Batch;
use crate::shared::Shared;
use crate::worker::Worker;

/// Wraps a service taking `Vec<Req>` in a [`Batch`] taking single `Req`s.
///
/// Each [`Layer::layer`] call moves the inner service into a new worker task
/// (it must run inside a tokio runtime); the [`Batch`] it returns, and all
/// its clones, share that worker. [`BatchLayer::handle`] closes and drains
/// every batcher this layer built. See the crate docs for an example.
pub struct BatchLayer<Req, Resp> {
    settings: Arc<Settings<Req, Resp>>,
    registry: Arc<Registry>,
}

impl<Req, Resp> BatchLayer<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A builder with every default (see `docs/batching.md`).
    pub fn builder() -> BatchLayerBuilder<Req, Resp> {
        BatchLayerBuilder::default()
    }

    pub(crate) fn from_settings(settings: Settings<Req, Resp>) -> Self {
        Self {
            settings: Arc::new(settings),
            registry: Arc::new(Registry::default()),
        }
    }

    /// A handle that closes and drains every batcher this layer has built
    /// or will build.
    pub fn handle(&self) -> BatchHandle {
        BatchHandle::new(self.registry.clone())
    }
}

impl<Req, Resp> Clone for BatchLayer<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for BatchLayer<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Resp> Layer<S> for BatchLayer<Req, Resp>
where
    S: Service<Vec<Req>, Response = Vec<Resp>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Service = Batch<Req, Resp>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Arc::new(Shared::new(self.settings.clone()));
        let control: Arc<dyn Control> = shared.clone();
        self.registry
            .add(Arc::downgrade(&control) as Weak<dyn Control>);
        let worker = Worker::new(inner, shared.clone());
        crate::spawn::spawn_worker(&self.settings.name, worker.run());
        Batch::new(shared)
    }
}
