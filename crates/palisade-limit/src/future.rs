//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;
use crate::error::Overloaded;
use crate::finish::Finish;
use crate::limiter::Permit;

pin_project! {
    /// Response future of [`AdaptiveLimit`](crate::AdaptiveLimit). It holds
    /// the call's [`Permit`]: dropped unfinished (the caller went away), it
    /// gives the slot back without a sample.
    pub struct ResponseFuture<Fut, F> {
        #[pin]
        state: State<Fut, F>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<Fut, F> {
        /// Admitted and running.
        Called {
            #[pin]
            inner: Fut,
            permit: Option<Permit>,
            finish: F,
        },
        /// Refused.
        Refused {
            error: Option<Overloaded>,
            in_band: bool,
            finish: F,
        },
    }
}

impl<Fut, F> ResponseFuture<Fut, F> {
    pub(crate) fn called(inner: Fut, permit: Permit, finish: F) -> Self {
        Self {
            state: State::Called {
                inner,
                permit: Some(permit),
                finish,
            },
        }
    }

    pub(crate) fn refused(error: Overloaded, in_band: bool, finish: F) -> Self {
        Self {
            state: State::Refused {
                error: Some(error),
                in_band,
                finish,
            },
        }
    }
}

impl<Fut, F> fmt::Debug for ResponseFuture<Fut, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Called { .. } => f.write_str("ResponseFuture::Called"),
            State::Refused { error, .. } => write!(f, "ResponseFuture::Refused({error:?})"),
        }
    }
}

impl<Fut, F, T, E> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: Finish<T>,
{
    type Output = Result<F::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Called {
                inner,
                permit,
                finish,
            } => {
                let result = ready!(inner.poll(cx)).map_err(Into::into);
                let permit = permit
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(finish.finish(result, permit))
            }
            Proj::Refused {
                error,
                in_band,
                finish,
            } => {
                let error = error
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(finish.refused(error, *in_band))
            }
        }
    }
}
