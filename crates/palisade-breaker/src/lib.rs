//! A circuit breaker as a [tower] layer: resilience4j's semantics, lock-free
//! while closed, deterministic under `tokio::time::pause`.
//!
//! A circuit breaker stops a failing upstream from dragging its callers down:
//! while it is open, calls fail in nanoseconds instead of queueing behind
//! timeouts, and the upstream gets room to recover.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_breaker::{Breaker, CircuitBreakerLayer, Config, Rejected, State};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = Breaker::new(
//!     Config::builder()
//!         .name("inventory")
//!         .count_window(20)             // rates over the last 20 calls
//!         .minimum_calls(5)             // ... once at least 5 are recorded
//!         .failure_rate_threshold(0.5)  // open at 50% failures
//!         .wait_duration(Duration::from_secs(10))
//!         .build()?,
//! );
//! let handle = breaker.clone(); // read and control the state at run time
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker))
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err("upstream failed") } else { Ok("ok") }
//!     }));
//!
//! for _ in 0..5 {
//!     let _ = service.ready().await?.call(true).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Open: the call fails fast, without reaching the upstream.
//! let error = service.ready().await?.call(false).await.unwrap_err();
//! let rejected = error.downcast_ref::<Rejected>().expect("a rejection");
//! assert!(rejected.retry_after().unwrap() <= Duration::from_secs(10));
//! # Ok(())
//! # }
//! ```
//!
//! # States
//!
//! [`State::Closed`] records outcomes in a sliding window and opens when the
//! failure rate or the slow-call rate reaches its threshold (once the window
//! holds [`minimum_calls`](ConfigBuilder::minimum_calls)), or after
//! [`consecutive_failures`](ConfigBuilder::consecutive_failures).
//! [`State::Open`] rejects calls until the wait has elapsed; the next call
//! then moves it to [`State::HalfOpen`] (lazily: no background task), which
//! admits exactly [`half_open_probes`](ConfigBuilder::half_open_probes)
//! concurrent probes and closes or re-opens on their outcomes. Each re-opening
//! without a clean close in between waits longer (exponential, jittered,
//! capped). A half-open round that does not decide within
//! [`max_half_open_duration`](ConfigBuilder::max_half_open_duration) (a probe
//! hung) re-opens, so the breaker can never stick half-open.
//!
//! The handle ([`Breaker`]) can also force [`State::ForcedOpen`],
//! [`State::Disabled`] and [`State::MetricsOnly`], and [`reset`](Breaker::reset).
//!
//! # Tower semantics
//!
//! Every service built from a [`CircuitBreakerLayer`] (and every clone) shares
//! one breaker. The service's error is [`BoxError`]; a rejection is a
//! [`Rejected`] carrying the time until the next probe. `poll_ready` delegates
//! to the inner service and is never poisoned; [`ReadyMode::WaitWhileOpen`]
//! makes it `Pending` while open instead, for balancers. A response future
//! dropped before completion counts as neither success nor failure (and gives
//! a probe slot back). [`KeyedCircuitBreakerLayer`] keeps one breaker per key
//! taken from the request.
//!
//! # Observability
//!
//! Every transition emits a `tracing` event (target `palisade_breaker`,
//! fields `breaker`, `from`, `to`, `reason`, `failure_rate`,
//! `slow_call_rate`, `calls`) and runs the
//! [`on_transition`](ConfigBuilder::on_transition) callback. Metrics (label
//! `breaker`):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `palisade_breaker_state` | gauge | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only |
//! | `palisade_breaker_calls_total` | counter | completed calls, label `outcome` = `success` / `failure` / `ignored` / `cancelled` |
//! | `palisade_breaker_slow_calls_total` | counter | calls at or over the slow-call duration |
//! | `palisade_breaker_rejected_total` | counter | calls rejected without reaching the service |
//! | `palisade_breaker_transitions_total` | counter | transitions, labels `from`, `to` |
//! | `palisade_breaker_evicted_total` | counter | idle closed per-key breakers evicted to make room for a new key |
//!
//! # Feature `http`
//!
//! [`http::HttpClassifier`] counts 5xx responses (a configurable set) as
//! failures, and [`http::rejected_response`] turns a rejection into `503
//! Service Unavailable` with `Retry-After` rounded up to whole seconds (never
//! 0). [`http::BodyEndLayer`] classifies a response when its body ends, so a
//! `200` whose body fails mid-stream counts as a failure.
//! [`http::GrpcClassifier`] classifies gRPC calls by their `grpc-status`
//! (trailers-only headers, or the trailers at the body's end), and
//! `BodyEndLayer` answers a rejected gRPC call with a trailers-only
//! `UNAVAILABLE`.
//!
//! See `docs/circuit-breaker.md` for every knob, choosing the window, and how
//! to order the breaker with retries, timeouts and rate limiting.
//!
//! [tower]: https://docs.rs/tower

mod breaker;
mod classify;
mod clock;
mod config;
mod counts;
mod decide;
mod error;
mod future;
mod keyed;
mod layer;
pub mod metrics;
mod service;
mod state;
mod sync;
mod window;
mod word;

#[cfg(feature = "http")]
pub mod http;

pub use breaker::{Breaker, Permit};
pub use classify::{Classify, ClassifyFn, DefaultClassifier, Outcome, classify_fn};
pub use clock::{Clock, DefaultClock, TokioClock};
pub use config::{
    Config, ConfigBuilder, FailureMode, MAX_WINDOW_SIZE, OnTransition, SlidingWindow,
};
pub use counts::WindowCounts;
pub use error::{ConfigError, Rejected};
pub use future::ResponseFuture;
pub use keyed::{KeyedBreakers, KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use layer::CircuitBreakerLayer;
pub use service::{CircuitBreaker, ReadyMode};
pub use state::{Reason, State, Transition};

/// The error type of the services: the inner error or a [`Rejected`]. The
/// one definition all palisade crates share (the same type as
/// `tower::BoxError`).
pub use palisade_core::BoxError;
