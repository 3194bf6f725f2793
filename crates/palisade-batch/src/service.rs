//! The service handle callers use.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::TryAcquireError;
use tokio::sync::oneshot;
use tokio_util::sync::PollSemaphore;
use tower::BoxError;
use tower_service::Service;

use crate::config::Flush;
use crate::error::Error;
use crate::future::ResponseFuture;
use crate::handle::BatchHandle;
use crate::message::Entry;
use crate::shared::Shared;

/// A service that collects single requests into batches for an inner service
/// taking `Vec<Req>` and answering a `Vec<Resp>` of the same length, in order.
/// Built by [`BatchLayer`](crate::BatchLayer).
///
/// `poll_ready` reserves a queue slot (`Pending` while the queue is full),
/// `call` uses it; clones share the batcher and start without a slot; a
/// handle dropped with a slot reserved gives it back. When the last handle
/// is dropped the batcher flushes what it holds, answers it, and its worker
/// exits. See the crate docs for an example.
pub struct Batch<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Set in `poll_ready` when a slot is reserved, cleared by `call`.
    reserved: bool,
    /// Waits for a slot when the queue is full; made on first need, so the
    /// uncontended path allocates nothing.
    wait: Option<PollSemaphore>,
}

impl<Req, Resp> Batch<Req, Resp> {
    pub(crate) fn new(shared: Arc<Shared<Req, Resp>>) -> Self {
        shared.handle_added();
        Self {
            shared,
            reserved: false,
            wait: None,
        }
    }

    /// A handle to close and drain this batcher.
    pub fn handle(&self) -> BatchHandle
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        BatchHandle::single(self.shared.clone())
    }

    fn closed(&self) -> BoxError {
        Error::Closed(self.shared.closed_reason()).into()
    }
}

impl<Req, Resp> Clone for Batch<Req, Resp> {
    /// A clone shares the batcher and starts without a reserved slot.
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl<Req, Resp> Drop for Batch<Req, Resp> {
    fn drop(&mut self) {
        if self.reserved {
            self.shared.slots.add_permits(1);
        }
        self.shared.handle_dropped();
    }
}

impl<Req, Resp> fmt::Debug for Batch<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("batcher", &self.shared.settings.name)
            .field("reserved", &self.reserved)
            .field("closed", &self.shared.closed().is_some())
            .finish()
    }
}

impl<Req, Resp> Service<Req> for Batch<Req, Resp>
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
                    // The entry carries the slot from here; the worker gives
                    // it back when the entry leaves the queue.
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
            "Batch::call without poll_ready returning Ready (the queue slot is reserved there)"
        );
        self.reserved = false;
        let settings = &self.shared.settings;
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            weight: settings.weight_of(&req),
            at: (settings.flush == Flush::Timer).then(tokio::time::Instant::now),
            req,
            tx,
        };
        match self.shared.push(entry) {
            Ok(()) => ResponseFuture::waiting(rx),
            Err(_refused) => {
                self.shared.slots.add_permits(1);
                ResponseFuture::failed(Error::Closed(self.shared.closed_reason()))
            }
        }
    }
}
