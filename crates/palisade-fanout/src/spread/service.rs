//! The spread service, its layer and its future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{ConfigError, ItemFailed};

/// The order of a spread call's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// In input order. Default.
    #[default]
    Input,
    /// In the order the calls completed.
    Completion,
}

/// What a failed item does to a spread call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Failure {
    /// Every item is called; each result is kept. Default.
    #[default]
    CollectAll,
    /// The first failure ends the call with an [`ItemFailed`]: the calls in
    /// flight are cancelled and no further item is taken.
    FailFast,
}

/// Builds a [`Spread`] around a service; see [`SpreadLayer::new`].
#[derive(Debug, Clone, Copy)]
pub struct SpreadLayer {
    concurrency: usize,
    order: Order,
    failure: Failure,
}

impl SpreadLayer {
    /// At most `concurrency` calls in flight per spread call, results in
    /// input order, every result kept. `concurrency` = 0 is a
    /// [`ConfigError`] naming `concurrency`.
    pub fn new(concurrency: usize) -> Result<Self, ConfigError> {
        if concurrency == 0 {
            return Err(crate::error::config_error(
                "concurrency",
                "must be at least 1",
            ));
        }
        Ok(Self {
            concurrency,
            order: Order::Input,
            failure: Failure::CollectAll,
        })
    }

    /// Sets the order of the results.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Sets what a failed item does.
    pub fn failure(mut self, failure: Failure) -> Self {
        self.failure = failure;
        self
    }
}

impl<S> Layer<S> for SpreadLayer {
    type Service = Spread<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Spread {
            inner,
            config: *self,
        }
    }
}

/// Calls the inner service once per item of a collection, with at most
/// `concurrency` calls in flight; built by [`SpreadLayer`].
///
/// See the [module docs](crate::spread).
#[derive(Clone)]
pub struct Spread<S> {
    inner: S,
    config: SpreadLayer,
}

impl<S> Spread<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Spread<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spread")
            .field("inner", &self.inner)
            .field("concurrency", &self.config.concurrency)
            .field("order", &self.config.order)
            .field("failure", &self.config.failure)
            .finish()
    }
}

impl<S, I> Service<I> for Spread<S>
where
    I: IntoIterator,
    S: Service<I::Item> + Clone,
    S::Error: Into<BoxError>,
{
    /// `(input position, result)` per item, in the configured [`Order`]. In
    /// [`Failure::FailFast`] mode every result is `Ok`.
    type Response = Vec<(usize, Result<S::Response, S::Error>)>;
    type Error = BoxError;
    type Future = SpreadFuture<S, I::IntoIter>;

    /// Always ready: each call drives the inner service's readiness itself,
    /// once per item, on its own clone.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, items: I) -> Self::Future {
        SpreadFuture {
            svc: self.inner.clone(),
            items: Some(items.into_iter()),
            next: 0,
            in_flight: FuturesUnordered::new(),
            results: Vec::new(),
            config: self.config,
        }
    }
}

pin_project! {
    struct Indexed<F> {
        index: usize,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Indexed<F> {
    type Output = (usize, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let index = *this.index;
        this.future.poll(cx).map(|out| (index, out))
    }
}

pin_project! {
    /// Response future of [`Spread`]. Dropping it cancels the calls in
    /// flight; items not yet taken are never pulled from the iterator.
    pub struct SpreadFuture<S, It>
    where
        It: Iterator,
        S: Service<It::Item>,
    {
        svc: S,
        // `None` once exhausted.
        items: Option<It>,
        next: usize,
        in_flight: FuturesUnordered<Indexed<S::Future>>,
        results: Vec<(usize, Result<S::Response, S::Error>)>,
        config: SpreadLayer,
    }
}

impl<S, It> fmt::Debug for SpreadFuture<S, It>
where
    It: Iterator,
    S: Service<It::Item>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpreadFuture")
            .field("taken", &self.next)
            .field("in_flight", &self.in_flight.len())
            .field("done", &self.results.len())
            .finish_non_exhaustive()
    }
}

impl<S, It> Future for SpreadFuture<S, It>
where
    It: Iterator,
    S: Service<It::Item>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Vec<(usize, Result<S::Response, S::Error>)>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let limit = this.config.concurrency;
        loop {
            // Fill the window: readiness first, then (only then) the item.
            while this.in_flight.len() < limit {
                let Some(items) = this.items.as_mut() else {
                    break;
                };
                // An iterator that knows it is empty ends here; any other
                // shows its end only when asked for an item, which waits
                // for readiness like every item.
                if items.size_hint().1 == Some(0) {
                    *this.items = None;
                    break;
                }
                match this.svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => break,
                }
                match items.next() {
                    Some(item) => {
                        let index = *this.next;
                        *this.next += 1;
                        this.in_flight.push(Indexed {
                            index,
                            future: this.svc.call(item),
                        });
                    }
                    None => *this.items = None,
                }
            }

            match this.in_flight.poll_next_unpin(cx) {
                Poll::Ready(Some((index, result))) => {
                    if this.config.failure == Failure::FailFast
                        && let Err(e) = result
                    {
                        // Cancel the rest now, not when the caller drops us.
                        this.in_flight.clear();
                        *this.items = None;
                        return Poll::Ready(Err(ItemFailed {
                            index,
                            source: e.into(),
                        }
                        .into()));
                    }
                    this.results.push((index, result));
                }
                // Nothing in flight: done if the items are, else waiting for
                // readiness (poll_ready registered the waker).
                Poll::Ready(None) if this.items.is_none() => {
                    let mut results = std::mem::take(this.results);
                    if this.config.order == Order::Input {
                        results.sort_unstable_by_key(|(i, _)| *i);
                    }
                    return Poll::Ready(Ok(results));
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
