//! Adaptive concurrency limits as a [tower] layer: the limit finds the
//! service's capacity by itself and follows it when it moves, so a service
//! under any overload keeps answering at capacity instead of collapsing.
//!
//! A static limit protects a service only when whoever set it knew the
//! capacity; by Little's law the right limit is throughput × latency, and
//! both change with deploys, data and autoscaling. This layer measures: each
//! completed call is a sample (latency, outcome), and an [`Algorithm`]
//! ([`ProbingGradient`] by default; [`Gradient2`], [`Vegas`], [`Aimd`], or
//! yours) moves the limit toward the concurrency where latency starts to
//! rise. Calls beyond the limit are refused in microseconds with
//! [`Overloaded`] (HTTP `503` + `Retry-After`, gRPC `UNAVAILABLE`), or wait
//! in a bounded CoDel queue ([`Mode::Queue`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_limit::{AdaptiveLimitLayer, Limiter, Overloaded, Vegas};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let limiter = Limiter::builder()
//!     .name("inventory")
//!     .algorithm(Vegas::builder().initial_limit(2).min_limit(1).build()?)
//!     .build()?;
//! let handle = limiter.clone(); // read the limit at run time
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(AdaptiveLimitLayer::new(limiter))
//!     .service(service_fn(|ms: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok::<_, BoxError>("done")
//!     }));
//!
//! // Two calls fill the initial limit of 2; the third is refused at once.
//! let a = service.ready().await?.call(10);
//! let b = service.ready().await?.call(10);
//! let refused = service.ready().await?.call(10).await.unwrap_err();
//! assert!(refused.downcast_ref::<Overloaded>().is_some());
//! assert_eq!(handle.in_flight(), 2);
//!
//! assert_eq!(a.await?, "done");
//! assert_eq!(b.await?, "done");
//! assert_eq!(handle.in_flight(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Tower semantics
//!
//! Every service built from an [`AdaptiveLimitLayer`], and every clone of
//! them, shares the one [`Limiter`]: one limit, one in-flight count. A slot
//! is reserved in `poll_ready` and consumed by the next `call`; a service
//! dropped with a reservation gives it back; a clone starts unreserved. When
//! the limit is full, `poll_ready` readies a refusal (like tower's
//! `LoadShed`) in [`Mode::Reject`], or waits for a slot in [`Mode::Queue`]
//! (woken by the release that frees it: no polling, no spinning). A call's
//! [`Permit`] is given back when its response future completes, fails,
//! panics or is dropped (the HTTP layer: when the response body ends). A
//! cancelled call is not a sample.
//!
//! The error is [`BoxError`]; a refusal is an [`Overloaded`] naming its
//! [`Reason`].
//!
//! # Queue mode
//!
//! A call that finds the limit full waits, at most [`max_wait`] and behind
//! at most [`max_queue`] others. The queue is watched CoDel-style: when its
//! shortest wait stays above [`target_delay`] (5 ms) for a whole
//! [`interval`] (100 ms) the queue is *standing*, and then it serves the
//! newest waiter first (adaptive LIFO: the oldest are the likeliest to have
//! been given up on) and sheds waiters older than twice the target.
//!
//! # Partitions and deadlines
//!
//! [`classes`] splits the limit into classes with guaranteed shares (idle
//! shares are lent out); a [`RequestPolicy`] names each request's class and
//! its caller's deadline. A request whose deadline has passed is never
//! started, and an admitted one forwards the time left
//! (`http::HttpPolicy`: `grpc-timeout` and a configurable header).
//!
//! # Draining
//!
//! [`Limiter::close`] refuses new and queued calls, and [`Limiter::idle`]
//! resolves when the last call in flight has ended; `Limiter::drain_phase`
//! (feature `shutdown`) runs both as a palisade-shutdown phase with a
//! deadline.
//!
//! # Observability
//!
//! A `tracing` event (target `palisade_limit`, fields `limiter`,
//! `algorithm`, `from`, `to`, `rtt_ms`, `in_flight`) each time the limit has
//! moved by more than [`log_change`] (10%) since the last event, never one
//! per call. Metrics (label `limiter`; no task is spawned):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `palisade_limit_limit` | gauge | the current limit |
//! | `palisade_limit_in_flight` | gauge | calls in flight, as of a recent completed call (every 8th) |
//! | `palisade_limit_queued` | gauge | calls waiting in the queue |
//! | `palisade_limit_rejected_total` | counter | refusals, labels `class`, `reason` (`limit`, `queue_timeout`, `queue_shed`, `class_share`, `deadline`) |
//! | `palisade_limit_rtt_seconds` | histogram | sample latency (every 8th success, every drop), label `outcome` (`success`, `drop`) |
//! | `palisade_limit_queue_delay_seconds` | histogram | time a call waited for its slot |
//!
//! # Feature `http`
//!
//! [`http::layer`] holds a call's slot until its response body ends, counts
//! `503`, `429` and gRPC `RESOURCE_EXHAUSTED`/`UNAVAILABLE` as drops, reads
//! deadlines from headers, and answers a refused gRPC call with a
//! trailers-only `UNAVAILABLE`.
//!
//! See `docs/overload.md` for choosing an algorithm, every knob, and how the
//! limit composes with rate limits, breakers, retries and hedging.
//!
//! [tower]: https://docs.rs/tower
//! [`max_wait`]: LimiterBuilder::max_wait
//! [`max_queue`]: LimiterBuilder::max_queue
//! [`target_delay`]: LimiterBuilder::target_delay
//! [`interval`]: LimiterBuilder::interval
//! [`classes`]: LimiterBuilder::classes
//! [`log_change`]: LimiterBuilder::log_change

pub mod algorithm;
mod codel;
mod config;
mod counts;
mod error;
mod finish;
mod future;
#[cfg(feature = "http")]
pub mod http;
mod layer;
mod limiter;
pub mod metrics;
mod partition;
mod policy;
mod service;
mod sync;

pub use algorithm::{Aimd, Algorithm, Bounds, Fixed, Gradient2, ProbingGradient, Sample, Vegas};
pub use config::{LimiterBuilder, Mode};
pub use error::{Overloaded, Reason};
pub use finish::{AtCompletion, Finish};
pub use future::ResponseFuture;
pub use layer::AdaptiveLimitLayer;
pub use limiter::{Limiter, Permit};
pub use palisade_core::BoxError;
pub use palisade_core::classify::{Classify, Outcome, classify_fn};
pub use policy::{Deadline, NoPolicy, RequestPolicy};
pub use service::AdaptiveLimit;
