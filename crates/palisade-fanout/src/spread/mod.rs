//! Spread: many items, one service, at most `n` calls in flight.
//!
//! [`Spread`] takes any collection (`IntoIterator`) of requests and calls
//! the inner service once per item:
//!
//! - it checks `poll_ready` **before** taking the next item from the
//!   iterator, so no item is pulled (or built, for a lazy iterator) before
//!   the service can take it, and nothing is spawned;
//! - at most [`concurrency`](SpreadLayer::new) calls are in flight; a
//!   completed call frees its slot at once, whatever the order of the
//!   results;
//! - results come in input order or completion order ([`Order`]), all kept
//!   or stopping at the first failure ([`Failure`]).
//!
//! The window stays full however the caller polls: the gathering happens
//! inside the response future, which refills the window in the same poll
//! that sees a completion. (A *stream* of results cannot promise that: its
//! consumer decides when it is polled, which is how `buffered` loses its
//! window, futures-rs #2387. So spread returns the whole result, and the
//! plain [`fan_out_fan_in`] does the same.)
//!
//! # Example
//!
//! ```
//! use palisade_fanout::spread::SpreadLayer;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let fetch_all = ServiceBuilder::new()
//!     .layer(SpreadLayer::new(8)?) // at most 8 lookups at a time
//!     .service(service_fn(|id: u32| async move { Ok::<_, BoxError>(id * 10) }));
//! let results = fetch_all.oneshot(vec![1, 2, 3]).await?;
//! let values: Vec<u32> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
//! assert_eq!(values, [10, 20, 30]);
//! # Ok(())
//! # }
//! ```
//!
//! # Differences from `tower::util::CallAll` and `buffer_unordered`
//!
//! `CallAll` pulls the next item before the service is ready (tower #801);
//! `buffered`/`buffer_unordered` count finished-but-unconsumed results
//! against the limit and stall while the consumer is busy. Spread does
//! neither.

mod func;
mod service;

pub use func::{fan_out_fan_in, try_fan_out_fan_in};
pub use service::{Failure, Order, Spread, SpreadFuture, SpreadLayer};
