//! Spawning the worker tasks with names.

use std::future::Future;

use tracing::Instrument;

/// Spawns worker `index` of pool `name` on the current tokio runtime, inside
/// a span naming both. Built with `--cfg tokio_unstable`, the task itself is
/// named `palisade-pool worker <name>#<index>`, which is what tokio-console
/// shows.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
pub(crate) fn spawn_worker<F>(name: &str, index: usize, worker: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let worker = worker
        .instrument(tracing::info_span!("palisade-pool worker", pool = %name, worker = index));
    drop(palisade_core::task::spawn_named(
        format_args!("palisade-pool worker {name}#{index}"),
        worker,
    ));
}
