//! The service handle callers use.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::TryAcquireError;
use tokio::sync::oneshot;
use tokio_util::sync::PollSemaphore;
use tower::BoxError;
use tower_service::Service;

use crate::config::{PoolBuilder, Settings};
use crate::error::Error;
use crate::future::ResponseFuture;
use crate::handle::PoolHandle;
use crate::message::Job;
use crate::shared::Shared;
use crate::worker::Worker;

/// A tower service in front of N workers, each owning its own inner service
/// made by a factory; built by [`Pool::builder`].
///
/// Jobs wait in one shared bounded queue and an idle worker takes the next
/// one, so no job waits behind a slow one while a worker is idle.
/// `poll_ready` reserves a queue slot (`Pending` while the queue is full),
/// `call` uses it; clones share the pool and start without a slot; a handle
/// dropped with a slot reserved gives it back. When the last handle is
/// dropped the workers finish the queue and exit. See the crate docs for an
/// example.
pub struct Pool<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Set in `poll_ready` when a slot is reserved, cleared by `call`.
    reserved: bool,
    /// Waits for a slot when the queue is full; made on first need.
    wait: Option<PollSemaphore>,
}

impl<Req: Send + 'static> Pool<Req, ()> {
    /// A builder with every default (see `docs/worker-pool.md`). The
    /// response type is the inner service's, fixed by `build`.
    pub fn builder() -> PoolBuilder<Req> {
        PoolBuilder::default()
    }
}

impl<Req, Resp> Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub(crate) fn start<M, S>(settings: Settings<Req>, factory: M) -> Self
    where
        M: Service<usize, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send + 'static,
        S: Service<Req, Response = Resp> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let workers = settings.workers;
        let shared = Arc::new(Shared::new(settings));
        let factory = Arc::new(tokio::sync::Mutex::new(factory));
        for i in 0..workers {
            let worker = Worker::new(i, shared.clone(), factory.clone());
            crate::spawn::spawn_worker(&shared.settings.name, i, worker.run());
        }
        Self::new(shared)
    }
}

impl<Req, Resp> Pool<Req, Resp> {
    fn new(shared: Arc<Shared<Req, Resp>>) -> Self {
        shared.handle_added();
        Self {
            shared,
            reserved: false,
            wait: None,
        }
    }

    /// A handle to close and drain this pool, and read its counters.
    pub fn handle(&self) -> PoolHandle
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        PoolHandle::new(self.shared.clone())
    }

    fn closed(&self) -> BoxError {
        Error::Closed(self.shared.closed_reason()).into()
    }
}

impl<Req, Resp> Clone for Pool<Req, Resp> {
    /// A clone shares the pool and starts without a reserved slot.
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl<Req, Resp> Drop for Pool<Req, Resp> {
    fn drop(&mut self) {
        if self.reserved {
            self.shared.slots.add_permits(1);
        }
        self.shared.handle_dropped();
    }
}

impl<Req, Resp> fmt::Debug for Pool<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("pool", &self.shared.settings.name)
            .field("workers", &self.shared.settings.workers)
            .field("reserved", &self.reserved)
            .field("closed", &self.shared.closed().is_some())
            .finish()
    }
}

impl<Req, Resp> Service<Req> for Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        if self.wait.is_none() {
            match self.shared.slots.try_acquire() {
                Ok(permit) => {
                    // The job carries the slot from here; the worker gives
                    // it back when the job leaves the queue.
                    permit.forget();
                    self.reserved = true;
                    return Poll::Ready(Ok(()));
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(self.closed())),
                Err(TryAcquireError::NoPermits) => {}
            }
        }
        let shared = &self.shared;
        let wait = self
            .wait
            .get_or_insert_with(|| PollSemaphore::new(shared.slots.clone()));
        match ready!(wait.poll_acquire(cx)) {
            Some(permit) => {
                permit.forget();
                self.reserved = true;
                self.wait = None;
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(self.closed())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert!(
            self.reserved,
            "Pool::call without poll_ready returning Ready (the queue slot is reserved there)"
        );
        self.reserved = false;
        let target = self.shared.settings.worker_for(&req);
        let (tx, rx) = oneshot::channel();
        let job = Job {
            req,
            tx,
            seq: 0,
            span: tracing::Span::current(),
        };
        match self.shared.push(job, target) {
            Ok(()) => ResponseFuture::waiting(rx),
            Err(_refused) => {
                self.shared.slots.add_permits(1);
                ResponseFuture::failed(Error::Closed(self.shared.closed_reason()))
            }
        }
    }
}
