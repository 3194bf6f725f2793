//! Named tasks: every task palisade spawns goes through [`spawn_named`], so
//! tokio-console shows what it is (`palisade-batch worker orders`,
//! `palisade-shutdown signal`, ...).

use std::fmt::Display;
use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `future` on the current tokio runtime, as `tokio::spawn` does.
/// Built with `--cfg tokio_unstable` (what tokio-console needs), the task is
/// named `name`; otherwise `name` is not even formatted.
///
/// # Panics
///
/// Outside a tokio runtime, like `tokio::spawn`.
#[track_caller]
pub fn spawn_named<F>(name: impl Display, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(tokio_unstable)]
    {
        let name = name.to_string();
        // `Builder::spawn` returns `Ok` in every tokio release so far; its
        // `Result` is reserved, and an error there is where `tokio::spawn`
        // itself would panic.
        tokio::task::Builder::new()
            .name(&name)
            .spawn(future)
            .unwrap_or_else(|e| panic!("cannot spawn task {name}: {e}"))
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_named_task_runs_to_its_output() {
        let handle = super::spawn_named(format_args!("palisade-core test {}", 1), async { 7 });
        assert_eq!(handle.await.unwrap(), 7);
    }
}
