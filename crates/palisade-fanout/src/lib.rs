//! Fan-out as [tower] services: send work to many places at once and gather
//! the answers.
//!
//! | pattern | module | one … | many … | gathers |
//! |---|---|---|---|---|
//! | scatter-gather | [`scatter`] | request | services | [`All`](scatter::All), [`FirstOk`](scatter::FirstOk), [`Quorum`](scatter::Quorum), or a user merge |
//! | hedged requests | [`hedge`] | request | attempts (same service or replicas) | the first success, extra load capped by a budget |
//! | spread | [`spread`] | service | requests | every result, at most `n` in flight |
//!
//! # Example
//!
//! A lookup service that hedges its slowest 5% (for at most 5% more load),
//! and a batch endpoint over it that looks up many keys with at most 16 in
//! flight:
//!
//! ```
//! use std::time::Duration;
//! use palisade_fanout::hedge::{Delay, HedgeConfig, HedgeLayer};
//! use palisade_fanout::spread::SpreadLayer;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let backend = service_fn(|key: u64| async move { Ok::<_, BoxError>(key + 1) });
//! let batch = ServiceBuilder::new()
//!     .layer(SpreadLayer::new(16)?)
//!     .layer(HedgeLayer::new(
//!         HedgeConfig::builder()
//!             .delay(Delay::Percentile(0.95))
//!             .max_extra_load(0.05)
//!             .build()?,
//!     ))
//!     .timeout(Duration::from_secs(1))
//!     .service(backend);
//! let answers = batch.oneshot(vec![1, 2, 3]).await?;
//! let values: Vec<u64> = answers.into_iter().map(|(_, r)| r.unwrap()).collect();
//! assert_eq!(values, [2, 3, 4]);
//! # Ok(())
//! # }
//! ```
//!
//! # Cancellation and time
//!
//! Nothing is spawned: every branch, attempt and item is a future owned by
//! the response future, so dropping it cancels all of them. Timers come from
//! `tokio::time` (so `tokio::time::pause()` drives them in tests).
//!
//! # Metrics
//!
//! Emitted through the [`metrics`] facade (names in [`metric_names`]):
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `palisade_fanout_scatter_calls_total` | counter | `scatter`, `outcome` = `ok`/`error` | scatter calls finished |
//! | `palisade_fanout_scatter_branches_total` | counter | `scatter`, `outcome` = `ok`/`service`/`not_ready`/`timed_out`/`deadline`/`cancelled` | branch outcomes |
//! | `palisade_fanout_hedge_primaries_total` | counter | `hedge` | requests (primary attempts) |
//! | `palisade_fanout_hedge_hedges_total` | counter | `hedge` | extra attempts sent |
//! | `palisade_fanout_hedge_won_total` | counter | `hedge` | requests answered by an extra attempt |
//! | `palisade_fanout_hedge_budget_exhausted_total` | counter | `hedge` | hedges the budget refused |
//! | `palisade_fanout_hedge_delay_seconds` | gauge | `hedge` | the current hedge delay |
//!
//! # Tracing
//!
//! Target `palisade_fanout`: `warn` when a hedge budget runs out ("hedging
//! paused"), `info` when it has room again. One event per change, not per
//! request.
//!
//! # Feature `http`
//!
//! [`http::BufferBodyLayer`] buffers a request body once (up to a cap, 413
//! over it) so requests can be cloned per branch or attempt;
//! [`http::HttpPolicy`] hedges only GET, HEAD and OPTIONS.
//!
//! See `docs/fan-out.md` for choosing a strategy, hedging safety, and where
//! these layers go relative to the breaker and the rate limiter.
//!
//! [tower]: https://docs.rs/tower

mod error;
pub mod hedge;
pub mod scatter;
pub mod spread;

#[cfg(feature = "http")]
pub mod http;

pub use error::{AllFailed, BranchError, ConfigError, ItemFailed, QuorumFailed};

/// Names of the metrics this crate emits (see the crate docs for kinds and
/// labels).
pub mod metric_names {
    /// Counter, labels `scatter`, `outcome`: scatter calls finished.
    pub const SCATTER_CALLS: &str = "palisade_fanout_scatter_calls_total";
    /// Counter, labels `scatter`, `outcome`: branch outcomes.
    pub const SCATTER_BRANCHES: &str = "palisade_fanout_scatter_branches_total";
    /// Counter, label `hedge`: requests (primary attempts).
    pub const HEDGE_PRIMARIES: &str = "palisade_fanout_hedge_primaries_total";
    /// Counter, label `hedge`: extra attempts sent.
    pub const HEDGE_SENT: &str = "palisade_fanout_hedge_hedges_total";
    /// Counter, label `hedge`: requests an extra attempt answered.
    pub const HEDGE_WON: &str = "palisade_fanout_hedge_won_total";
    /// Counter, label `hedge`: hedges the budget refused.
    pub const HEDGE_BUDGET_EXHAUSTED: &str = "palisade_fanout_hedge_budget_exhausted_total";
    /// Gauge, label `hedge`: the current hedge delay in seconds.
    pub const HEDGE_DELAY: &str = "palisade_fanout_hedge_delay_seconds";
}
