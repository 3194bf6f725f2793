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
    drop(palisade_core::task::spawn_named(
        format_args!("palisade-batch worker {name}"),
        worker,
    ));
}
