//! A shared, keyed GCRA rate limiter for [`tower`](https://docs.rs/tower)
//! services, with bounded memory, standard HTTP headers and gRPC statuses
//! (feature `http`), peer addresses from axum's `ConnectInfo` (feature
//! `axum`) and a Redis backend for fleets (feature `redis`).
//!
//! # Example
//!
//! A per-client limit and a global limit in front of a service; both must
//! admit a request, and every clone of the stack shares the same state:
//!
//! ```
//! use std::time::Duration;
//! use palisade_ratelimit::{key_fn, KeyedLimiter, Limiter, PerKey, Quota, RateLimitLayer, RateLimited};
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Requests are (client, body) pairs here; with the `http` feature use the
//! // shipped extractors (peer IP, trusted-proxy client IP, header, route).
//! let per_client = PerKey::new(
//!     KeyedLimiter::builder(Quota::per_second(2)?).name("per-client").max_keys(10_000).build()?,
//!     key_fn(|req: &(&'static str, u32)| Some(req.0)),
//! );
//! let global = Limiter::builder(Quota::per_second(1_000)?).name("global").build();
//!
//! let layer = RateLimitLayer::new((per_client, global));
//! let svc = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service_fn(|req: (&'static str, u32)| async move { Ok::<_, BoxError>(req.1 * 2) });
//!
//! assert_eq!(svc.clone().oneshot(("alice", 1)).await?, 2);
//! assert_eq!(svc.clone().oneshot(("alice", 2)).await?, 4);
//! let err = svc.clone().oneshot(("alice", 3)).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().expect("a rate limit error");
//! assert_eq!(limited.policy(), "per-client");
//! assert!(limited.retry_after() <= Duration::from_millis(500));
//! // Another client has its own budget.
//! assert_eq!(svc.oneshot(("bob", 4)).await?, 8);
//! assert_eq!(layer.policy().0.limiter().len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # Pieces
//!
//! - [`Quota`]: a rate (cells per period) and a burst; invalid values are an
//!   `Err` naming the field.
//! - [`Limiter`]: one limit, one atomic theoretical-arrival-time word updated
//!   with compare-and-swap. [`KeyedLimiter`]: one such word per key, with a
//!   hard cap on tracked keys (expired keys evicted first, then the least
//!   recently seen).
//! - [`Policy`]: what a request is checked against: a [`Limiter`], a
//!   [`PerKey`] (keyed limiter + [`KeyExtractor`]), `Option<P>`, or a tuple of
//!   policies that must all admit.
//! - [`RateLimitLayer`] / [`RateLimit`]: the tower middleware, in [`Mode::Reject`]
//!   (servers) or [`Mode::Wait`] (clients, backpressure).
//! - [`Clock`]: a TSC clock in production, `tokio::time` when built in a
//!   runtime whose clock is paused (the rule the breaker follows too).
//!
//! # Algorithm
//!
//! GCRA (the generic cell rate algorithm): a quota of `rate` per `period`
//! emits one cell every `T = period / rate`; the state is the theoretical
//! arrival time `TAT`. A request of `n` cells at time `t` is admitted iff
//! `max(TAT, t) + n·T − t ≤ burst·T`, and then `TAT` becomes
//! `max(TAT, t) + n·T`. Over any interval of length `d`, at most
//! `burst + ⌊d / T⌋` cells are admitted. There is no refill task and no
//! allocation per check.
//!
//! # Differences from `tower::limit::RateLimit`
//!
//! tower's `RateLimit` is a fixed window whose state lives in each service, so
//! a stack built per connection limits each connection separately. Here the
//! state is shared through the layer's `Arc`, the algorithm has no window
//! edges (no double burst at a boundary), over-limit requests can be rejected
//! instead of queued, and limits can be keyed.
//!
//! # Metrics
//!
//! Registered when a limiter is built (install the recorder first), all with a
//! `policy` label: counters [`palisade_ratelimit_admitted_total`](metrics::ADMITTED),
//! [`palisade_ratelimit_limited_total`](metrics::LIMITED),
//! [`palisade_ratelimit_shadow_limited_total`](metrics::SHADOW_LIMITED),
//! [`palisade_ratelimit_evicted_total`](metrics::EVICTED),
//! [`palisade_ratelimit_missing_key_total`](metrics::MISSING_KEY),
//! [`palisade_ratelimit_backend_errors_total`](metrics::BACKEND_ERRORS) (plus a
//! `fail` label), and the gauge [`palisade_ratelimit_keys`](metrics::KEYS).
//! A `tracing` event at `INFO` marks the first rejection of a key (or of an
//! unkeyed limiter) after it was last admitted.

mod clock;
mod error;
mod future;
mod keyed;
mod layer;
mod limiter;
pub mod metrics;
mod policy;
mod quota;
mod service;
mod sync;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "redis")]
pub mod redis;

pub use clock::{Clock, ManualClock};
pub use error::{BoxError, InsufficientCapacity, MissingKey, QuotaError, RateLimited};
pub use future::ResponseFuture;
pub use keyed::{DEFAULT_MAX_KEYS, KeyedLimiter, KeyedLimiterBuilder, MIN_KEYS_PER_SHARD};
pub use layer::{DEFAULT_MAX_WAIT, Mode, RateLimitLayer};
pub use limiter::{Limiter, LimiterBuilder};
pub use policy::{KeyExtractor, KeyFn, PerKey, Policy, Report, Verdict, key_fn};
pub use quota::{Decision, Quota, QuotaBuilder};
pub use service::RateLimit;
