//! Making workers' services.

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tower::BoxError;
use tower_service::Service;

use crate::error::panic_message;

/// A factory made of a closure (see
/// [`PoolBuilder::build_fn`](crate::PoolBuilder::build_fn)).
pub(crate) struct FnFactory<F>(pub(crate) F);

impl<F> fmt::Debug for FnFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnFactory")
    }
}

impl<F: FnMut(usize) -> S, S> Service<usize> for FnFactory<F> {
    type Response = S;
    type Error = Infallible;
    type Future = Ready<Result<S, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, worker: usize) -> Self::Future {
        ready(Ok((self.0)(worker)))
    }
}

/// Asks the shared factory for worker `index`'s service. The lock is held
/// only while the factory is made ready and called, not while the service
/// is being built, so workers build in parallel. A panic in the factory is
/// a failure like any other.
pub(crate) async fn make<M, S>(factory: &tokio::sync::Mutex<M>, index: usize) -> Result<S, BoxError>
where
    M: Service<usize, Response = S>,
    M::Error: Into<BoxError>,
{
    let attempt = async {
        let future = {
            let mut factory = factory.lock().await;
            std::future::poll_fn(|cx| factory.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            factory.call(index)
        };
        future.await.map_err(Into::into)
    };
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(made) => made,
        Err(panic) => Err(format!("the factory panicked: {}", panic_message(&*panic)).into()),
    }
}
