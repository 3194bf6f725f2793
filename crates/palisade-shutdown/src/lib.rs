//! Coordinated shutdown for tower and hyper services: ordered phases with
//! deadlines, a drain layer that loses no accepted request, connection
//! draining, readiness and an outcome report.
//!
//! The pieces:
//!
//! - [`Shutdown`]: the root handle. It owns a tree of [`Scope`]s (cancel a
//!   scope, its children follow, its parent does not; tasks are tracked per
//!   scope by name), the ordered [`Phase`]s, each with a deadline, and the
//!   [`Readiness`] flag, which turns `false` the moment shutdown starts.
//!   [`Shutdown::run`] returns an [`Outcome`]: per phase, how long it took,
//!   what finished, what was cut at the deadline, and the exit code to use.
//! - [`signal`]: the first SIGINT/SIGTERM starts the shutdown, a second one
//!   forces it.
//! - [`DrainLayer`] (generic) and `http::HttpDrainLayer` (feature `http`):
//!   count requests in flight (in `http` mode until the response *body*
//!   ends), refuse new ones once draining ([`Draining`], or
//!   `503` + `Retry-After` + `Connection: close`), exempt health checks, and
//!   hand each request a [`DrainToken`] to watch.
//! - `server::Server` (feature `hyper`): accepts HTTP/1 and HTTP/2 (told
//!   apart by peeking, so hyper's read buffer is sized once) and drains
//!   connections: idle keep-alive ones
//!   close at once, busy ones get `Connection: close` or GOAWAY, the rest is
//!   force-closed at the deadline.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_shutdown::{Drain, Phase, Shutdown, Trigger};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let shutdown = Shutdown::new();
//! let drain = Drain::new();
//!
//! // Every request through this stack is counted by `drain`.
//! let svc = ServiceBuilder::new()
//!     .layer(drain.layer())
//!     .service_fn(|req: &'static str| async move { Ok::<_, std::convert::Infallible>(req.len()) });
//! assert_eq!(svc.clone().oneshot("hello").await?, 5);
//!
//! // A background task in its own scope, told to stop in the flush phase.
//! let batcher = shutdown.scope().child("batcher");
//! let token = batcher.token();
//! batcher.spawn("flush-loop", async move { token.cancelled().await });
//!
//! let readiness = shutdown.readiness();
//! shutdown.add_phase(Phase::delay("readiness-delay", Duration::from_millis(10)))?;
//! shutdown.add_phase(
//!     Phase::new("drain", Duration::from_secs(30)).action(move |_ctx| async move { drain.drain().await }),
//! )?;
//! shutdown.add_phase(Phase::new("flush", Duration::from_secs(5)).cancel(&batcher).wait(&batcher))?;
//!
//! // Usually `palisade_shutdown::signal::spawn(&shutdown)?` starts it on SIGTERM.
//! shutdown.start(Trigger::Requested);
//! assert!(!readiness.is_ready());
//! let outcome = shutdown.run().await;
//! assert!(outcome.is_clean());
//! assert_eq!(outcome.code(), 0);
//!
//! // Once draining, the stack refuses new requests with a typed error.
//! let err = svc.oneshot("late").await.unwrap_err();
//! assert!(matches!(err.downcast_ref(), Some(palisade_shutdown::Draining)));
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Emitted through the [`metrics`] facade (names in [`metric_names`]):
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `palisade_shutdown_started_total` | counter | `trigger` | shutdowns started |
//! | `palisade_shutdown_forced_total` | counter | | shutdowns forced |
//! | `palisade_shutdown_phase_active` | gauge | `phase` | 1 while the phase runs |
//! | `palisade_shutdown_phase_duration_seconds` | histogram | `phase`, `status` | phase durations |
//! | `palisade_shutdown_cut_total` | counter | `phase` | items cut at a deadline |
//! | `palisade_shutdown_drain_started_total` | counter | | drains started |
//! | `palisade_shutdown_in_flight_requests` | gauge | | requests in flight, updated while draining |
//! | `palisade_shutdown_rejected_total` | counter | | requests refused while draining |
//! | `palisade_shutdown_connections_closed_total` | counter | `how` = `graceful`/`forced` | connections closed by a drain |
//!
//! The in-flight gauge is only written once draining has started, so the
//! request fast path stays one atomic increment and one decrement;
//! [`Drain::in_flight`] reads the count at any time.
//!
//! # Tracing
//!
//! `info` events: `shutdown started` (trigger), `shutdown phase started`,
//! `shutdown phase finished`, `drain started` (in-flight count), `listener
//! closed`, `draining connections`, `connections drained`, `shutdown
//! complete`. `warn` events: `shutdown phase cut work` and `shutdown cut
//! work short` (naming what was cut), `shutdown forced`, `second signal:
//! forcing shutdown`, `drain deadline: force-closing connections`.
//!
//! See `docs/shutdown.md` in the repository for the phases, their defaults and
//! wiring into axum and hyper.

mod coordinator;
mod drain;
mod error;
pub mod future;
mod layer;
mod outcome;
mod readiness;
mod scope;
mod service;
pub mod signal;

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "hyper")]
pub mod server;

pub use coordinator::{DEFAULT_CUT_GRACE, Phase, PhaseContext, Shutdown};
pub use drain::{Drain, DrainToken};
pub use error::{Draining, Error};
pub use layer::DrainLayer;
pub use outcome::{Outcome, PhaseOutcome, PhaseStatus, Trigger};
pub use readiness::Readiness;
pub use scope::Scope;
pub use service::DrainService;

/// A type-erased error: the one definition all palisade crates share (the
/// same type as `tower::BoxError`).
pub use palisade_core::BoxError;

/// Names of the metrics this crate emits (see the crate docs for kinds and
/// labels).
pub mod metric_names {
    /// Counter, label `trigger`: shutdowns started.
    pub const STARTED: &str = "palisade_shutdown_started_total";
    /// Counter: shutdowns forced by a second signal or `Shutdown::force`.
    pub const FORCED: &str = "palisade_shutdown_forced_total";
    /// Gauge, label `phase`: 1 while the phase runs, 0 after.
    pub const PHASE: &str = "palisade_shutdown_phase_active";
    /// Histogram, labels `phase`, `status`: phase durations in seconds.
    pub const PHASE_DURATION: &str = "palisade_shutdown_phase_duration_seconds";
    /// Counter, label `phase`: items cut at a phase's deadline.
    pub const CUT: &str = "palisade_shutdown_cut_total";
    /// Counter: drains started.
    pub const DRAIN_STARTED: &str = "palisade_shutdown_drain_started_total";
    /// Gauge: requests in flight, written while draining.
    pub const IN_FLIGHT: &str = "palisade_shutdown_in_flight_requests";
    /// Counter: requests refused because draining had started.
    pub const REJECTED: &str = "palisade_shutdown_rejected_total";
    /// Counter, label `how` (`graceful`/`forced`): connections closed by a drain.
    pub const CONNECTIONS_CLOSED: &str = "palisade_shutdown_connections_closed_total";
}
