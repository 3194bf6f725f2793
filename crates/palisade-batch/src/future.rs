//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;
use tower::BoxError;

use crate::error::{Closed, Error};

/// Response future of [`Batch`](crate::Batch): resolves to this item's own
/// result once its batch comes back.
///
/// Dropping it before the item was sent takes the item out of the batch
/// (it is skipped when the batch is formed and its queue slot freed);
/// dropping it after discards the result quietly.
pub struct ResponseFuture<T> {
    state: State<T>,
}

enum State<T> {
    Waiting(oneshot::Receiver<Result<T, Error>>),
    Failed(Option<Error>),
}

impl<T> ResponseFuture<T> {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<T, Error>>) -> Self {
        Self {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn failed(err: Error) -> Self {
        Self {
            state: State::Failed(Some(err)),
        }
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting(_) => "waiting",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(e.into()),
                // The worker answers every item it takes; a dropped sender
                // means the worker itself is gone (its runtime shut down).
                Err(_) => Err(Error::Closed(Closed::WorkerGone).into()),
            }),
            State::Failed(err) => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}
