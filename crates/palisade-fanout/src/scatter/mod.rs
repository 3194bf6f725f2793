//! Scatter-gather: one request, sent to every service of a fixed set, the
//! results gathered by a strategy.
//!
//! | strategy | done when | output | fails when |
//! |---|---|---|---|
//! | [`All`] | every branch answered (or was cut) | each branch's own `Result`, by position | never (failures are in the output) |
//! | [`FirstOk`] | the first success | [`Won`] (branch and response) | every branch failed: [`AllFailed`](crate::AllFailed) with each failure |
//! | [`Quorum`] | `k` successes (+ optional grace) | `(branch, response)` of the successes | `k` became impossible: [`QuorumFailed`](crate::QuorumFailed) |
//! | [`GatherExt::merge`] | as the strategy it wraps | what the merge returns | as the strategy, or the merge's error |
//!
//! The request is cloned once per branch (the last branch takes the
//! original). Each call drives every branch on its own clone of that
//! branch's service, readiness included, so `poll_ready` of [`Scatter`] is always
//! ready and one backed-up service never blocks the others: with a
//! [`ready_timeout`](ScatterBuilder::ready_timeout) it simply fails for that
//! call. Branches the strategy no longer needs are dropped (cancelled) at
//! once; dropping the response future cancels all of them. Nothing is
//! spawned.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_fanout::scatter::{GatherExt, Quorum, Scatter};
//! use tower::{BoxError, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let replica = |version: u64| {
//!     service_fn(move |_key: &'static str| async move { Ok::<_, BoxError>(version) })
//! };
//! // Read from three replicas, done at two answers, keep the newest.
//! let mut read = Scatter::builder([replica(7), replica(8), replica(7)])
//!     .branch_timeout(Duration::from_millis(50))
//!     .build(Quorum::new(2).merge(|answers: Vec<(usize, u64)>| {
//!         Ok(answers.into_iter().map(|(_, v)| v).max().expect("k >= 1"))
//!     }))?;
//! let newest = read.ready().await?.call("user:42").await?;
//! assert!(newest == 7 || newest == 8);
//!
//! // k = 0 or k > n is refused when the service is built.
//! let err = Scatter::builder([replica(1)]).build(Quorum::new(2)).unwrap_err();
//! assert_eq!(err.field(), "quorum.k");
//! # Ok(())
//! # }
//! ```

mod future;
mod gather;
mod service;

pub use future::{BranchFuture, ScatterFuture};
pub use gather::{
    All, FirstOk, FirstOkState, Gather, GatherExt, Merged, Quorum, QuorumState, Step, Strategy, Won,
};
pub use service::{Scatter, ScatterBuilder};
