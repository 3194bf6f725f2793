//! Request batching for tower: many callers each send one request, an inner
//! service receives them as one `Vec`, and every caller gets exactly its own
//! answer back, exactly once.
//!
//! - **Contract.** The inner service is a plain
//!   `Service<Vec<Req>, Response = Vec<Resp>>` answering one result per
//!   request, in order. Per-item failures are part of `Resp` (for example
//!   `Result<T, E>` entries), so one bad item does not fail its neighbours.
//!   A whole-batch error reaches every caller of that batch as
//!   [`Error::Failed`] (the inner error is shared, it need not be `Clone`); a
//!   result count that does not match is [`Error::LengthMismatch`] for each
//!   of them; a panic is [`Error::Panicked`]; the batcher keeps serving.
//! - **When a batch goes out.** When it holds
//!   [`max_items`](BatchLayerBuilder::max_items) or
//!   [`max_weight`](BatchLayerBuilder::max_weight); and, by default
//!   ([`Flush::Opportunistic`]), as soon as fewer than
//!   [`max_in_flight`](BatchLayerBuilder::max_in_flight) batches are in
//!   flight and the inner service is ready: at low load an item goes out
//!   alone at once, at high load items pile up behind the batches in flight
//!   (group commit). [`Flush::Timer`] waits up to
//!   [`max_latency`](BatchLayerBuilder::max_latency) for a fuller batch.
//! - **De-duplication** ([`dedup`](BatchLayerBuilder::dedup)): equal keys in
//!   one batch are sent once and the result is cloned to each caller.
//! - **Bisection** ([`bisect`](BatchLayerBuilder::bisect)): a failed batch is
//!   retried as two halves, recursively, so one poison item fails alone.
//! - **Backpressure.** `poll_ready` reserves a slot of a bounded queue;
//!   `call` uses it; clones start unreserved; a dropped reservation is
//!   returned.
//! - **Cancellation.** A caller that drops its future before its item was
//!   sent is skipped (it never reaches the inner service); after, its result
//!   is discarded.
//! - **Failure.** An inner `poll_ready` error means the inner service is
//!   dead: every waiting caller gets [`Closed::InnerFailed`] and the batcher
//!   refuses new items with it from then on.
//! - **Shutdown.** When the last [`Batch`] handle is dropped, or
//!   [`BatchHandle::close`] is called, queued items are flushed at once and
//!   answered before the worker exits; [`BatchHandle::drain_until`] and
//!   `BatchHandle::drain_phase` (feature `shutdown`) cut what is left at a
//!   deadline with [`Error::Cut`] and count it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_batch::{BatchLayer, Flush};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // The inner service looks up many ids in one call: one result per id,
//! // in order; a missing id is that item's own `Err`.
//! let lookup = service_fn(|ids: Vec<u64>| async move {
//!     let found: Vec<Result<String, &'static str>> = ids
//!         .iter()
//!         .map(|&id| if id == 0 { Err("no such item") } else { Ok(format!("item-{id}")) })
//!         .collect();
//!     Ok::<_, std::convert::Infallible>(found)
//! });
//!
//! let layer = BatchLayer::builder()
//!     .name("items")
//!     .max_items(64)
//!     .max_in_flight(4)
//!     .flush(Flush::Opportunistic)
//!     .dedup(|id: &u64| *id)
//!     .build()?;
//! let drain = layer.handle();
//! let items = ServiceBuilder::new().layer(layer).service(lookup);
//!
//! // Many callers, one item each; each gets exactly its own answer.
//! let calls = (0..5u64).map(|id| items.clone().oneshot(id));
//! let answers = futures_util::future::try_join_all(calls).await?;
//! assert_eq!(answers[0], Err("no such item"));
//! assert_eq!(answers[3], Ok("item-3".to_owned()));
//!
//! // At shutdown: stop taking items, answer what is queued, at most 5 s.
//! let report = drain
//!     .drain_until(tokio::time::Instant::now() + Duration::from_secs(5))
//!     .await;
//! assert_eq!(report.cut, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Emitted through the [`metrics`](::metrics) facade (names in [`metric_names`]), each
//! labelled `batcher` with the batcher's [name](BatchLayerBuilder::name):
//!
//! | name | kind | extra labels | meaning |
//! |---|---|---|---|
//! | `palisade_batch_flushes_total` | counter | `reason` = `size`/`weight`/`latency`/`opportunistic`/`shutdown`/`retry` | batches sent, by why they went out |
//! | `palisade_batch_size` | histogram | | requests per batch as the inner service saw it |
//! | `palisade_batch_items_total` | counter | | callers whose item was sent |
//! | `palisade_batch_deduplicated_total` | counter | | callers served by another caller's request |
//! | `palisade_batch_cancelled_total` | counter | | items skipped: the caller left before the item was sent |
//! | `palisade_batch_discarded_total` | counter | | results dropped: the caller left after the item was sent |
//! | `palisade_batch_failed_total` | counter | `kind` = `error`/`panic`/`length_mismatch` | batches the inner service failed |
//! | `palisade_batch_bisections_total` | counter | | failed batches split in two for a retry |
//! | `palisade_batch_cut_total` | counter | | items answered with [`Error::Cut`] at a drain deadline |
//! | `palisade_batch_queued` | gauge | | items taken from the queue, waiting for a batch |
//! | `palisade_batch_in_flight` | gauge | | batches the inner service is handling |
//!
//! # Tracing
//!
//! The worker runs in an `info` span `palisade-batch worker` with the
//! `batcher` field (and, built with `--cfg tokio_unstable`, as a task named
//! `palisade-batch worker <name>` for tokio-console). `warn`: `batch failed`,
//! `drain deadline: batch items cut`. `error`: `inner service panicked on a
//! batch`, `inner service broke the batch contract…`, `inner service failed
//! poll_ready; batcher closed`. `debug`: worker started and finished,
//! closing, bisecting. `info`: `batchers drained` with the counts.
//!
//! See `docs/batching.md` in the repository for every knob, how to order
//! the layer with rate limiting and the circuit breaker, and the benchmarks.

mod config;
mod dedup;
mod error;
mod future;
mod handle;
mod layer;
mod message;
mod metrics;
mod plan;
mod service;
mod shared;
mod spawn;
mod worker;

#[cfg(feature = "http")]
pub mod http;

pub use config::{
    BatchLayerBuilder, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_ITEMS, DEFAULT_MAX_LATENCY,
    DEFAULT_QUEUE_CAPACITY, Flush, MAX_BISECT_DEPTH,
};
pub use error::{Closed, ConfigError, Error, SharedError};
pub use future::ResponseFuture;
pub use handle::{BatchHandle, DrainReport};
pub use layer::BatchLayer;
pub use service::Batch;

/// Names of the metrics this crate emits (see the crate docs for kinds and
/// labels).
pub mod metric_names {
    /// Counter, labels `batcher`, `reason`: batches sent.
    pub const FLUSHES: &str = "palisade_batch_flushes_total";
    /// Histogram, label `batcher`: requests per batch.
    pub const SIZE: &str = "palisade_batch_size";
    /// Counter, label `batcher`: callers whose item was sent.
    pub const ITEMS: &str = "palisade_batch_items_total";
    /// Counter, label `batcher`: callers served by a de-duplicated request.
    pub const DEDUPLICATED: &str = "palisade_batch_deduplicated_total";
    /// Counter, label `batcher`: items skipped because their caller left.
    pub const CANCELLED: &str = "palisade_batch_cancelled_total";
    /// Counter, label `batcher`: results dropped because their caller left.
    pub const DISCARDED: &str = "palisade_batch_discarded_total";
    /// Counter, labels `batcher`, `kind`: batches the inner service failed.
    pub const FAILED: &str = "palisade_batch_failed_total";
    /// Counter, label `batcher`: failed batches split for a retry.
    pub const BISECTIONS: &str = "palisade_batch_bisections_total";
    /// Counter, label `batcher`: items cut at a drain deadline.
    pub const CUT: &str = "palisade_batch_cut_total";
    /// Gauge, label `batcher`: items waiting for a batch.
    pub const QUEUED: &str = "palisade_batch_queued";
    /// Gauge, label `batcher`: batches in flight.
    pub const IN_FLIGHT: &str = "palisade_batch_in_flight";
}
