//! Staged pipelines for tower: a chain of stages, each a
//! `Service<In, Response = Out>` on its own task behind a bounded queue, so
//! stage 2 of one item overlaps stage 1 of the next; every admitted item
//! comes out exactly once, and the metrics name the stage that limits
//! throughput.
//!
//! - **Stages are tower services**, so every palisade layer (rate limit,
//!   breaker, batch) applies to a stage unchanged. Types may change from
//!   stage to stage; a mismatch is a compile error. Write one with
//!   [`from_fn`] (an async closure) or as a [`Stage`] (a struct with a
//!   native `async fn`, adapted by [`from_stage`]).
//! - **Bounded everywhere.** Each stage has a queue
//!   ([`StageConfig::queue_capacity`]) and holds at most
//!   [`StageConfig::reorder_window`] items; a slow stage slows its
//!   producers and, at the end, the input. Memory does not grow.
//! - **Concurrency separate from order.** [`StageConfig::concurrency`] calls
//!   in flight at once; results leave [`Order::Ordered`],
//!   [`Order::Unordered`], or ordered per key
//!   ([`PipelineBuilder::stage_by_key`]).
//! - **Failures are items.** A failed (or panicking) call becomes an
//!   [`Error`] naming the stage and the item's sequence number, which
//!   travels in the item's place; the pipeline goes on, or stops
//!   ([`OnError::Stop`]).
//! - **Fan-out** ([`Pipeline::run_fan_out`]): each branch has its own
//!   buffer and [`Overflow`] policy, so a slow sink cannot stall its
//!   siblings.
//! - **Drain.** When the input ends, or on [`PipelineHandle::close`] /
//!   [`PipelineBuilder::cancel_on`], every admitted item flows through every
//!   stage and comes out. [`PipelineHandle::drain_until`] (and
//!   `PipelineHandle::drain_phase`, feature `shutdown`) cuts at a deadline
//!   and reports how many items were cut at which stage.
//! - **Bottleneck.** [`PipelineHandle::stats`] and the metrics below give
//!   each stage's queue depth, throughput, errors, service time and busy
//!   fraction; [`PipelineHandle::bottleneck`] names the busiest stage.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use futures_util::StreamExt;
//! use palisade_pipeline::{PipelineBuilder, StageConfig, from_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = PipelineBuilder::new("words")
//!     .stage(
//!         StageConfig::new("parse"),
//!         from_fn(|s: &'static str| async move { s.parse::<u64>() }),
//!     )
//!     .stage(
//!         StageConfig::new("square").concurrency(4),
//!         from_fn(|n: u64| async move { Ok::<_, Infallible>(n * n) }),
//!     )
//!     .build()?;
//!
//! let input = futures_util::stream::iter(["1", "2", "x", "4"]);
//! let (handle, output) = pipeline.run(input);
//! let results: Vec<_> = output.collect().await;
//! assert_eq!(results[1].as_ref().unwrap(), &4);
//! let err = results[2].as_ref().unwrap_err();
//! assert_eq!((err.stage(), err.seq()), ("parse", 2));
//! assert_eq!(results[3].as_ref().unwrap(), &16);
//!
//! let report = handle.drain().await;
//! assert_eq!((report.admitted, report.completed, report.total_cut()), (4, 4, 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Registered once per stage with labels `pipeline` and `stage` (branches:
//! `pipeline`, `branch`); see `docs/pipeline.md`.

mod builder;
mod config;
mod error;
mod fanout;
mod handle;
mod inflight;
mod item;
mod metrics;
mod output;
mod reorder;
mod spawn;
mod stage;
mod stats;
mod worker;

pub use builder::{Pipeline, PipelineBuilder};
pub use config::{
    DEFAULT_CONCURRENCY, DEFAULT_OUTPUT_CAPACITY, DEFAULT_QUEUE_CAPACITY, DEFAULT_WINDOW_FACTOR,
    OnError, Order, StageConfig,
};
pub use error::{ConfigError, Error};
pub use fanout::{BranchConfig, BranchOutput, BranchStats, Overflow};
pub use handle::{DrainReport, INPUT, PipelineHandle};
pub use output::Output;
pub use stage::{FnStage, Stage, StageService, from_fn, from_stage};
pub use stats::StageStats;

/// The names of the metrics the pipeline records.
pub mod metric_names {
    /// Counter: items taken from a stage's queue.
    pub const ITEMS_IN: &str = "palisade_pipeline_items_in_total";
    /// Counter: items a stage handed on (failed ones included).
    pub const ITEMS_OUT: &str = "palisade_pipeline_items_out_total";
    /// Counter: items a stage failed, label `kind` = `error` | `panic`.
    pub const ERRORS: &str = "palisade_pipeline_errors_total";
    /// Counter: items a drain deadline dropped at a stage.
    pub const CUT: &str = "palisade_pipeline_cut_total";
    /// Gauge: items waiting in the queue in front of a stage.
    pub const QUEUE_DEPTH: &str = "palisade_pipeline_queue_depth";
    /// Gauge: calls of a stage in flight.
    pub const IN_FLIGHT: &str = "palisade_pipeline_in_flight";
    /// Histogram: seconds per call of a stage.
    pub const SERVICE_SECONDS: &str = "palisade_pipeline_service_seconds";
    /// Gauge: the stage's busy fraction, 0..=1 (updated by
    /// `PipelineHandle::stats` and `bottleneck`).
    pub const BUSY_RATIO: &str = "palisade_pipeline_busy_ratio";
    /// Gauge: 1 for the stage `PipelineHandle::bottleneck` named last, 0 for
    /// the others.
    pub const BOTTLENECK: &str = "palisade_pipeline_bottleneck";
    /// Counter: results put into a fan-out branch's buffer.
    pub const BRANCH_DELIVERED: &str = "palisade_pipeline_branch_delivered_total";
    /// Counter: results a branch's overflow policy dropped, label `policy`.
    pub const BRANCH_DROPPED: &str = "palisade_pipeline_branch_dropped_total";
    /// Gauge: results in a branch's buffer.
    pub const BRANCH_DEPTH: &str = "palisade_pipeline_branch_depth";
}
