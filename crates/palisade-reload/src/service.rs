//! [`Reloadable`]: a service that routes each new request to the newest
//! generation of a [`Reloader`](crate::Reloader).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::future::ResponseFuture;
use crate::reloader::Generation;
use crate::shared::Shared;

/// The version of the generation that served a request, inserted into an
/// `http::Request`'s extensions by [`Reloadable`] (and recorded as the
/// `version` field of its `reload` span).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServedBy {
    /// The generation's version number.
    pub version: u64,
}

/// Requests [`Reloadable`] can mark with the version serving them.
///
/// Implemented for `http::Request<B>` (a [`ServedBy`] extension). Implement
/// it for other request types; an empty body is fine (the version is still
/// on the tracing span).
pub trait Stamp {
    /// Records the serving version on the request.
    fn stamp(&mut self, served_by: ServedBy);
}

impl<B> Stamp for http::Request<B> {
    #[inline]
    fn stamp(&mut self, served_by: ServedBy) {
        self.extensions_mut().insert(served_by);
    }
}

/// Routes requests to the newest generation of a
/// [`Reloader`](crate::Reloader); made by
/// [`Reloader::service`](crate::Reloader::service).
///
/// Each clone caches the generation's service it last used and its version;
/// `poll_ready` compares that version with the current one (one atomic load)
/// and switches to the newest generation's service when they differ. So a
/// request goes to the generation that was current when its service was
/// made ready, and once called its future belongs to that generation: a
/// request in flight during a reload finishes on the stack it started on.
///
/// Backpressure is the inner service's: `poll_ready` polls the cached
/// service. Switching drops the old clone (releasing whatever it had
/// reserved, per the tower contract) and polls the new one. A clone starts
/// on the same generation, with the inner service's own `Clone` (which, for
/// tower services, starts unreserved).
pub struct Reloadable<T, S> {
    shared: Shared<Generation<T, S>>,
    name: Arc<str>,
    version: u64,
    service: S,
    stamp: bool,
}

impl<T, S: Clone> Reloadable<T, S> {
    pub(crate) fn new(shared: Shared<Generation<T, S>>, name: Arc<str>) -> Self {
        let (version, service) = {
            let current = shared.load();
            (current.version(), current.service().clone())
        };
        Self {
            shared,
            name,
            version,
            service,
            stamp: true,
        }
    }

    /// Whether requests get a [`ServedBy`] extension (default `true`; the
    /// insertion allocates once per request, see docs/shared-state.md).
    pub fn stamp_requests(mut self, stamp: bool) -> Self {
        self.stamp = stamp;
        self
    }

    /// The version of the generation this clone uses now.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The cached service of the current generation.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// Switches to the newest generation if this clone is behind.
    #[inline]
    fn refresh(&mut self) {
        if self.shared.version() != self.version {
            let current = self.shared.load();
            self.service = current.service().clone();
            self.version = current.version();
            tracing::trace!(reload = %self.name, version = self.version, "switched to the newest generation");
        }
    }
}

impl<T, S, Req> Service<Req> for Reloadable<T, S>
where
    S: Service<Req> + Clone,
    Req: Stamp,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.refresh();
        self.service.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let served_by = ServedBy {
            version: self.version,
        };
        if self.stamp {
            req.stamp(served_by);
        }
        let span = tracing::debug_span!("reload", reload = %self.name, version = served_by.version);
        ResponseFuture::new(self.service.call(req), span)
    }
}

impl<T, S: Clone> Clone for Reloadable<T, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            name: self.name.clone(),
            version: self.version,
            service: self.service.clone(),
            stamp: self.stamp,
        }
    }
}

impl<T, S: fmt::Debug> fmt::Debug for Reloadable<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("service", &self.service)
            .finish()
    }
}
