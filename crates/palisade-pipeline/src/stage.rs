//! Writing a stage without writing a `Service` by hand: [`from_fn`] for an
//! async closure, [`Stage`] for a struct with a native `async fn`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

/// A stage written as a struct with a native `async fn` (no `async-trait`):
///
/// ```
/// use palisade_pipeline::Stage;
///
/// struct Parse;
///
/// impl Stage<String> for Parse {
///     type Out = u64;
///     type Error = std::num::ParseIntError;
///
///     async fn process(&self, line: String) -> Result<u64, Self::Error> {
///         line.trim().parse()
///     }
/// }
/// ```
///
/// Turn it into a stage service with [`from_stage`]. The trait is not
/// object safe (its future type is anonymous); a `Box<dyn ...>` of stages
/// needs a boxed future, which [`from_stage`]'s service provides.
pub trait Stage<In>: Send + Sync + 'static {
    /// What the stage produces from one item.
    type Out;
    /// How it fails one item.
    type Error: Into<BoxError>;

    /// Processes one item. Several calls may run at once (the stage's
    /// concurrency), hence `&self`.
    fn process(&self, item: In) -> impl Future<Output = Result<Self::Out, Self::Error>> + Send;
}

/// Adapts a [`Stage`] to a `Service`; see [`from_stage`].
#[derive(Debug)]
pub struct StageService<T> {
    stage: Arc<T>,
}

impl<T> Clone for StageService<T> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
        }
    }
}

/// Adapts a [`Stage`] to a `Service`, so every tower layer applies to it.
///
/// Its future is boxed: a `Service` must name its future type, and the
/// future of a native `async fn` in a trait has no name on stable Rust.
/// One allocation per item; [`from_fn`] avoids it for closures.
pub fn from_stage<T>(stage: T) -> StageService<T> {
    StageService {
        stage: Arc::new(stage),
    }
}

impl<T, In> Service<In> for StageService<T>
where
    T: Stage<In>,
    In: Send + 'static,
{
    type Response = T::Out;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<T::Out, T::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, item: In) -> Self::Future {
        let stage = self.stage.clone();
        Box::pin(async move { stage.process(item).await })
    }
}

/// A stage from a closure returning a future; see [`from_fn`].
#[derive(Debug, Clone)]
pub struct FnStage<F> {
    f: F,
}

/// A stage from `async` closure-like functions: `from_fn(|x: u64| async move
/// { Ok::<_, Infallible>(x + 1) })`. The closure's future is the service's
/// future, so nothing is boxed.
pub fn from_fn<F>(f: F) -> FnStage<F> {
    FnStage { f }
}

impl<F, Fut, In, Out, E> Service<In> for FnStage<F>
where
    F: FnMut(In) -> Fut,
    Fut: Future<Output = Result<Out, E>>,
{
    type Response = Out;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, item: In) -> Fut {
        (self.f)(item)
    }
}
