use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use crate::BoxError;
use pin_project_lite::pin_project;

use crate::{MissingKey, RateLimited};

/// Why a request was refused without reaching the inner service.
#[derive(Debug)]
pub(crate) enum Refusal {
    Limited(RateLimited),
    MissingKey(MissingKey),
}

impl From<Refusal> for BoxError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Limited(e) => e.into(),
            Refusal::MissingKey(e) => e.into(),
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner
    /// service's future, or a rejection resolved on first poll.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Limited { error: Option<Refusal> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn limited(error: RateLimited) -> Self {
        Self::refused(Refusal::Limited(error))
    }

    pub(crate) fn refused(error: Refusal) -> Self {
        Self {
            kind: Kind::Limited { error: Some(error) },
        }
    }

    /// The future for a refused verdict, or `None` if it admits.
    pub(crate) fn for_verdict(verdict: &crate::Verdict) -> Option<Self> {
        if let Some(missing) = verdict.missing_key {
            return Some(Self::refused(Refusal::MissingKey(missing)));
        }
        verdict.error().map(Self::limited)
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => Poll::Ready(ready!(future.poll(cx)).map_err(Into::into)),
            KindProj::Limited { error } => {
                let error = error
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Err(error.into()))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
