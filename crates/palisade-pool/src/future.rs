//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;
use tower::BoxError;

use crate::error::{Closed, Error};

/// Response future of [`Pool`](crate::Pool): resolves to this job's result.
///
/// Dropping it before a worker took the job means the job is skipped (never
/// run); dropping it while the job runs drops the inner service's future,
/// freeing the worker.
pub struct ResponseFuture<T> {
    state: State<T>,
}

enum State<T> {
    Waiting(oneshot::Receiver<Result<T, BoxError>>),
    Failed(Option<Error>),
}

impl<T> ResponseFuture<T> {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<T, BoxError>>) -> Self {
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

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(result) => result,
                // Workers answer every job they take and the last one to go
                // answers the queue; a dropped sender means the worker
                // tasks were dropped with their runtime.
                Err(_) => Err(Error::Closed(Closed::WorkerGone).into()),
            }),
            State::Failed(err) => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}
