//! HTTP (feature `http`): what counts as a drop, a slot held until the
//! response body ends, deadlines from headers, and the 503 / gRPC
//! `UNAVAILABLE` answers to a refusal.
//!
//! - [`DropClassifier`]: `503`, `429`, a gRPC `RESOURCE_EXHAUSTED` or
//!   `UNAVAILABLE`, and an `Err` (a timeout, a failed connection) are drops;
//!   anything else is a success.
//! - [`AtBodyEnd`]: a call ends when its response body ends, so a streaming
//!   response holds its slot while it streams (as palisade-shutdown's drain
//!   counts it).
//! - [`HttpPolicy`]: the caller's deadline from `grpc-timeout`, a
//!   configurable header (milliseconds) or the [`Deadline`](crate::Deadline)
//!   extension; forwards the reduced time left; classes from a function of
//!   the request head.
//! - [`overloaded_response`] / [`grpc_overloaded_response`]: `503 Service
//!   Unavailable` with `Retry-After` (rounded up, never 0), or a
//!   trailers-only `UNAVAILABLE` with `grpc-retry-pushback-ms`.
//!
//! [`layer`] puts them together:
//!
//! ```
//! use palisade_limit::{Limiter, http};
//! use tower::ServiceBuilder;
//! # use tower::service_fn;
//! # async fn handler(_: ::http::Request<String>) -> Result<::http::Response<String>, std::convert::Infallible> { Ok(::http::Response::new(String::new())) }
//!
//! let limiter = Limiter::builder().name("api").build().unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(http::layer(limiter, http::HttpPolicy::default()))
//!     .service(service_fn(handler));
//! # let _ = service;
//! ```

mod body;
mod classify;
mod policy;
mod response;

pub use body::{AtBodyEnd, LimitBody};
pub use classify::DropClassifier;
pub use policy::{Head, HttpPolicy};
pub use response::{grpc_overloaded_response, overloaded_response};

use crate::{AdaptiveLimitLayer, Limiter};

/// The HTTP layer: `limiter` over requests read by `policy`, slots held
/// until the response body ends, drops as [`DropClassifier`] says, gRPC
/// refusals answered in band.
pub fn layer(limiter: Limiter, policy: HttpPolicy) -> AdaptiveLimitLayer<HttpPolicy, AtBodyEnd> {
    AdaptiveLimitLayer::new(limiter)
        .policy(policy)
        .finish(AtBodyEnd::default())
}
