//! Read-mostly shared state and hot-reloadable tower services.
//!
//! - [`Shared<T>`]: a value many tasks read on every request and a few
//!   rarely replace (a configuration, a routing table). A read is a
//!   [`Snapshot`] that costs a few nanoseconds and never waits for a writer
//!   (arc-swap underneath); a write [`publish`](Shared::publish)es a whole
//!   new version atomically. Every snapshot carries its version number, and
//!   stays valid after newer writes. [`Watcher::changed`] wakes tasks that
//!   must react to a change.
//! - [`Reloader`] and [`Reloadable`]: a service rebuilt from each new
//!   configuration (`Fn(&T) -> Result<S, E>`). A new request goes to the
//!   newest generation; a request in flight finishes on the one it started
//!   on; the version that served it is a [`ServedBy`] request extension and
//!   the `version` field of a `reload` tracing span. While nothing changes
//!   the per-request cost is one atomic load.
//! - The transaction ([`Reloader::reload_with`]): load (parse, validate) ->
//!   build -> swap, then an optional [health check](ReloaderBuilder::health_check)
//!   that rolls back. Any failure leaves the previous version serving, is
//!   logged with the error (which names the field) and counted.
//! - [`Carry`]: state kept across generations, by name, while the
//!   parameters compare equal (rate limiters keep their buckets, breakers
//!   their state).
//! - Metrics in [`metrics`]: the serving version, reloads by result, the
//!   publication time.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use palisade_reload::{Carry, Reloader, ServedBy};
//! use tower::{ServiceExt, service_fn};
//!
//! #[derive(Debug, PartialEq)]
//! struct Config { greeting: String, limit: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // A stateful part carried across reloads while `limit` is unchanged.
//! let carry = Arc::new(Carry::new());
//! let build = {
//!     let carry = carry.clone();
//!     move |config: &Config| -> Result<_, tower::BoxError> {
//!         if config.greeting.is_empty() {
//!             return Err("`greeting`: must not be empty".into());
//!         }
//!         let mut pass = carry.pass();
//!         let counter = pass.get_or_build("counter", config.limit, |_| Arc::new(AtomicU64::new(0)));
//!         pass.commit();
//!         let greeting = config.greeting.clone();
//!         Ok(service_fn(move |req: http::Request<()>| {
//!             let n = counter.fetch_add(1, Ordering::Relaxed);
//!             let version = req.extensions().get::<ServedBy>().map(|s| s.version);
//!             let reply = format!("{greeting} #{n} (v{version:?})");
//!             async move { Ok::<_, tower::BoxError>(reply) }
//!         }))
//!     }
//! };
//! let reloader = Reloader::builder(build)
//!     .name("greeter")
//!     .build(Config { greeting: "hello".into(), limit: 10 })?;
//! let service = reloader.service();
//!
//! let reply = service.clone().oneshot(http::Request::new(())).await?;
//! assert_eq!(reply, "hello #0 (vSome(1))");
//!
//! // An invalid configuration is rejected; version 1 keeps serving.
//! let err = reloader
//!     .apply(Config { greeting: String::new(), limit: 10 })
//!     .await
//!     .unwrap_err();
//! assert!(err.to_string().contains("`greeting`"));
//! assert_eq!(reloader.current().version(), 1);
//!
//! // A valid one swaps; the counter (same `limit`) carries over.
//! let version = reloader.apply(Config { greeting: "hi".into(), limit: 10 }).await?;
//! assert_eq!(version, 2);
//! let reply = service.clone().oneshot(http::Request::new(())).await?;
//! assert_eq!(reply, "hi #1 (vSome(2))");
//! # Ok(())
//! # }
//! ```

mod carry;
mod error;
mod future;
pub mod metrics;
mod reloader;
mod service;
mod shared;
mod watch;

pub use crate::carry::{Carried, Carry, Pass};
pub use crate::error::{ReloadError, Stage};
pub use crate::future::ResponseFuture;
pub use crate::reloader::{Generation, Reloader, ReloaderBuilder};
pub use crate::service::{Reloadable, ServedBy, Stamp};
pub use crate::shared::{Shared, Snapshot, Versioned};
pub use crate::watch::Watcher;
