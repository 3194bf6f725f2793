//! Spawning the worker as a named task.

use std::future::Future;

use tracing::Instrument;

/// Spawns a batcher's worker on the current tokio runtime, inside a span
/// naming the batcher. Built with `--cfg tokio_unstable`, the task itself is
/// named `palisade-batch worker <name>`, which is what tokio-console shows.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
pub(crate) fn spawn_worker<F>(name: &str, worker: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let worker = worker.instrument(tracing::info_span!("palisade-batch worker", batcher = %name));
    #[cfg(tokio_unstable)]
    {
        let task = format!("palisade-batch worker {name}");
        // Builder::spawn fails only when the runtime is shutting down; the
        // worker future is then dropped, and its Drop answers and closes.
        if let Err(e) = tokio::task::Builder::new().name(&task).spawn(worker) {
            tracing::error!(batcher = %name, error = %e, "cannot spawn the batch worker");
        }
    }
    #[cfg(not(tokio_unstable))]
    {
        drop(tokio::spawn(worker));
    }
}
