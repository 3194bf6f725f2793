//! Hedged requests: when a request has no answer within the hedge delay,
//! send the same request again (to another replica when a set is given) and
//! take the first success.
//!
//! - **Delay**: fixed, or a percentile of a rotating window that records
//!   *every* attempt's latency at microsecond resolution: winners, errors,
//!   and losers (recorded when cancelled, as the time they had run).
//!   Recording only the winners, as `tower::hedge` does, hides exactly the
//!   slow attempts that make the tail, so its percentile understates.
//! - **Attempts**: up to [`max_attempts`](HedgeConfigBuilder::max_attempts),
//!   one more after each delay. The first [`Outcome::Success`] wins and the
//!   others are cancelled; an [`Outcome::Retryable`] failure waits for the
//!   attempts still running (and, when none is, sends the next at once); an
//!   [`Outcome::Fatal`] one is returned at once.
//! - **Budget**: hedges over the budget window never exceed
//!   [`max_extra_load`](HedgeConfigBuilder::max_extra_load) × primaries (+
//!   the optional [`min_hedges_per_sec`](HedgeConfigBuilder::min_hedges_per_sec)
//!   floor), Finagle's `maxExtraLoad`. When every request is slow the budget
//!   empties and hedging pauses by itself instead of doubling the load on a
//!   struggling backend.
//! - **Safety**: only requests the [`Policy`] calls
//!   [`hedgeable`](Policy::hedgeable) are hedged (over HTTP,
//!   `http::HttpPolicy`: GET, HEAD, OPTIONS).
//!
//! The error type is the inner service's own; a hedged service answers
//! exactly what one of its attempts answered.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_fanout::hedge::{Delay, HedgeConfig, HedgeLayer};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let hedge = HedgeLayer::new(
//!     HedgeConfig::builder()
//!         .delay(Delay::Percentile(0.95)) // hedge the slowest 5%...
//!         .max_extra_load(0.05)           // ... for at most 5% more requests
//!         .build()?,
//! );
//! let stats = hedge.hedger().clone();
//! let mut svc = ServiceBuilder::new()
//!     .layer(hedge)
//!     .service(service_fn(|id: u32| async move { Ok::<_, BoxError>(id * 2) }));
//! assert_eq!(svc.ready().await?.call(21).await?, 42);
//! assert_eq!(stats.stats().primaries, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Differences from `tower::hedge`
//!
//! `tower::hedge` sends at most one extra request, returns the first
//! completion even when it is an error, records only completed requests in
//! its histogram and has no budget. This one takes any number of attempts,
//! lets only a success (or a fatal error) win, records every attempt, and
//! caps the extra load.

mod config;
mod future;
mod histogram;
mod layer;
mod policy;
mod service;
mod state;
mod window;

pub use config::{Delay, HedgeConfig, HedgeConfigBuilder};
pub use future::HedgeFuture;
pub use layer::HedgeLayer;
pub use policy::{DefaultPolicy, HedgeIf, Outcome, Policy, hedge_if};
pub use service::Hedge;
pub use state::{HedgeStats, Hedger};
