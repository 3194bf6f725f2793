//! Worker pools for tower: a [`Pool`] of N workers that never lets a job
//! wait behind a slow worker, and a bounded [`CpuPool`] that keeps
//! synchronous CPU work off the async reactor.
//!
//! # `Pool`
//!
//! - **Workers own their service.** Each of the N workers makes its own
//!   inner service from a factory (a `tower::MakeService` with target
//!   `usize`, the worker index, or a closure through
//!   [`PoolBuilder::build_fn`]), so resources that are not `Clone` or not
//!   `Sync` (a connection, a stateful client, a parser with scratch
//!   buffers) can be pooled. A worker runs one job at a time.
//! - **One shared queue.** Jobs wait in one bounded queue and whichever
//!   worker is ready takes the next one: no job waits behind a slow one
//!   while a worker is idle (unlike dealing jobs round-robin to per-worker
//!   channels).
//! - **Backpressure.** `poll_ready` reserves a queue slot (`Pending` when
//!   full), `call` uses it, a dropped reservation is released; clones start
//!   unreserved.
//! - **Cancellation.** A job whose caller has gone is skipped, not run; a
//!   caller that leaves while its job runs drops the inner future.
//! - **Keyed affinity** ([`PoolBuilder::affinity`]): jobs with the same key
//!   run in submission order on one worker; jobs without a key go to any.
//! - **Supervision.** A panic is [`Error::Panicked`] for that caller and the
//!   worker gets a fresh service; a service whose `poll_ready` fails is
//!   replaced from the factory with capped exponential backoff
//!   ([`PoolBuilder::restart_backoff`]); a factory that fails
//!   [`max_factory_failures`](PoolBuilder::max_factory_failures) times in a
//!   row closes the pool with [`Closed::FactoryFailed`], answering every
//!   queued job, rather than leaving them waiting.
//! - **Shutdown.** When the last [`Pool`] handle is dropped, or
//!   [`PoolHandle::close`] is called, queued jobs still run, then the
//!   workers exit; [`PoolHandle::drain_until`] and `PoolHandle::drain_phase`
//!   (feature `shutdown`) cut what is left at a deadline with
//!   [`Error::Cut`] and count finished and cut jobs.
//!
//! ```
//! use std::time::Duration;
//! use palisade_pool::Pool;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Each worker owns a parser with its own scratch buffer (not shared,
//! // not Sync): the factory makes one per worker.
//! let pool = Pool::builder()
//!     .name("parsers")
//!     .workers(4)
//!     .build_fn(|_worker| {
//!         let mut scratch = String::new();
//!         service_fn(move |line: String| {
//!             scratch.clear();
//!             scratch.push_str(line.trim());
//!             let words = scratch.split_whitespace().count();
//!             async move { Ok::<_, std::convert::Infallible>(words) }
//!         })
//!     })?;
//! let drain = pool.handle();
//!
//! let calls = ["a b c", " d e ", "f"].map(|l| pool.clone().oneshot(l.to_owned()));
//! let counts = futures_util::future::try_join_all(calls).await?;
//! assert_eq!(counts, [3, 2, 1]);
//!
//! // At shutdown: stop taking jobs, run what is queued, at most 5 s.
//! let report = drain
//!     .drain_until(tokio::time::Instant::now() + Duration::from_secs(5))
//!     .await;
//! assert_eq!(report.cut, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # `CpuPool`
//!
//! Runs synchronous functions on its own
//! [`threads`](CpuPoolBuilder::threads) (default: the cores) threads, with
//! a bounded queue in front: [`CpuPool::run`],
//! [`CpuPool::try_run`] (fails fast with [`Error::Overloaded`]),
//! [`CpuPool::map`] (the bounded form of one `spawn_blocking` per item) and
//! [`CpuPool::service`] (a tower service, backpressure in `poll_ready`). A
//! job whose caller drops before it starts never runs; a panic is
//! [`Error::Panicked`] for that caller only.
//!
//! ```
//! use palisade_pool::CpuPool;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cpu = CpuPool::builder().threads(2).queue_capacity(16).build().unwrap();
//! let sums = cpu.map(0..4u64, |n| (0..=n * 1000).sum::<u64>()).await;
//! assert_eq!(sums[1].as_ref().unwrap(), &500_500);
//!
//! let boom = cpu.run(|| -> u64 { panic!("bad input") }).await;
//! assert!(matches!(boom, Err(palisade_pool::Error::Panicked(_))));
//! # }
//! ```
//!
//! # Metrics
//!
//! Emitted through the [`metrics`](::metrics) facade (names in [`metric_names`]), each
//! labelled `pool` with the pool's name:
//!
//! | name | kind | extra labels | meaning |
//! |---|---|---|---|
//! | `palisade_pool_jobs_total` | counter | `outcome` = `ok`/`error`/`panic`/`skipped`/`abandoned`/`cut`/`refused` | jobs by how they ended |
//! | `palisade_pool_queued` | gauge | | jobs waiting for a worker |
//! | `palisade_pool_busy_workers` | gauge | | workers running a job |
//! | `palisade_pool_worker_restarts_total` | counter | `reason` = `dead`/`panic` | worker services replaced |
//! | `palisade_pool_factory_failures_total` | counter | | factory calls that failed |
//! | `palisade_cpu_jobs_total` | counter | `outcome` = `ok`/`panic`/`skipped`/`overloaded` | CPU jobs by how they ended |
//! | `palisade_cpu_running` | gauge | | CPU jobs on a thread |
//! | `palisade_cpu_queued` | gauge | | CPU jobs admitted, waiting for a thread |
//!
//! # Tracing
//!
//! Each worker runs in an `info` span `palisade-pool worker` with the
//! `pool` and `worker` fields (and, built with `--cfg tokio_unstable`, as a
//! task named `palisade-pool worker <name>#<index>` for tokio-console); a
//! job runs inside its caller's span. `warn`: a service failed `poll_ready`
//! and is replaced, the factory failed. `error`: a job panicked, the
//! factory keeps failing and the pool closed. `info`: `pool drained`.
//!
//! See `docs/worker-pool.md` in the repository for when to use a pool
//! rather than `Buffer` or spawning, sizing, every knob, and the
//! benchmarks.

mod backoff;
mod config;
mod cpu;
mod error;
mod factory;
mod future;
mod handle;
mod message;
mod metrics;
mod service;
mod shared;
mod spawn;
mod worker;

#[cfg(feature = "http")]
pub mod http;

pub use config::{
    DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_FACTORY_FAILURES,
    DEFAULT_QUEUE_CAPACITY, PoolBuilder, default_parallelism,
};
pub use cpu::{
    CpuPool, CpuPoolBuilder, CpuStats, DEFAULT_CPU_QUEUE_CAPACITY, Offload, OffloadFuture,
};
pub use error::{Closed, ConfigError, Error, SharedError};
pub use future::ResponseFuture;
pub use handle::{DrainReport, PoolHandle, PoolStats};
pub use service::Pool;

/// Names of the metrics this crate emits (see the crate docs for kinds and
/// labels).
pub mod metric_names {
    /// Counter, labels `pool`, `outcome`: jobs by how they ended.
    pub const JOBS: &str = "palisade_pool_jobs_total";
    /// Gauge, label `pool`: jobs waiting for a worker.
    pub const QUEUED: &str = "palisade_pool_queued";
    /// Gauge, label `pool`: workers running a job.
    pub const BUSY_WORKERS: &str = "palisade_pool_busy_workers";
    /// Counter, labels `pool`, `reason`: worker services replaced.
    pub const WORKER_RESTARTS: &str = "palisade_pool_worker_restarts_total";
    /// Counter, label `pool`: factory calls that failed.
    pub const FACTORY_FAILURES: &str = "palisade_pool_factory_failures_total";
    /// Counter, labels `pool`, `outcome`: CPU jobs by how they ended.
    pub const CPU_JOBS: &str = "palisade_cpu_jobs_total";
    /// Gauge, label `pool`: CPU jobs on a thread.
    pub const CPU_RUNNING: &str = "palisade_cpu_running";
    /// Gauge, label `pool`: CPU jobs waiting for a thread.
    pub const CPU_QUEUED: &str = "palisade_cpu_queued";
}
