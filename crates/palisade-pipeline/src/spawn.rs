//! Spawning a pipeline's tasks, named for tokio-console.

use std::future::Future;

use tracing::Instrument;

/// Spawns one of a pipeline's tasks (a stage, the feeder, the fan-out) on
/// the current runtime inside a span naming the pipeline and the task. With
/// `--cfg tokio_unstable` the task is named `palisade-pipeline <pipeline>/<task>`.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
pub(crate) fn spawn_task<F>(pipeline: &str, task: &str, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let fut = fut
        .instrument(tracing::info_span!("palisade-pipeline", pipeline = %pipeline, task = %task));
    drop(palisade_core::task::spawn_named(
        format_args!("palisade-pipeline {pipeline}/{task}"),
        fut,
    ));
}
