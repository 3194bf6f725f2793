//! One mapping from every palisade error to its HTTP response.
//!
//! A stack of several palisade layers fails with a [`BoxError`] that may be
//! a rate limit rejection, an open breaker or a draining server.
//! [`error_response`] recognises each (also when another layer wrapped it:
//! the [`source`](std::error::Error::source) chain is walked) and builds the
//! response its crate's `http` module defines, so callers do not write the
//! downcast chain by hand:
//!
//! | error | response |
//! |---|---|
//! | `palisade_ratelimit::RateLimited` | `429 Too Many Requests`, `Retry-After`, `RateLimit-Policy` and `RateLimit` fields |
//! | `palisade_ratelimit::MissingKey` | `500 Internal Server Error` (a deployment error) |
//! | `palisade_breaker::Rejected` | `503 Service Unavailable`, `Retry-After` (none when forced open) |
//! | `palisade_shutdown::Draining` | `503 Service Unavailable`, `Retry-After`, `Connection: close` |
//! | `palisade_batch::Error::Failed` | what its source (the batch call's error) maps to, if a palisade error |
//! | `palisade_batch::Error::Closed`, `Cut` | `503 Service Unavailable`, `Retry-After` |
//! | `palisade_batch::Error::LengthMismatch` / `Panicked` | `502 Bad Gateway` / `500 Internal Server Error` |
//!
//! Every `Retry-After` is [`retry_after_secs`]: rounded up, never 0. Bodies
//! are empty (`B::default()`); set your own on the returned response.
//!
//! ```
//! use http::StatusCode;
//! use palisade::http::error_response;
//! use tower::BoxError;
//!
//! let err: BoxError = Box::new(palisade::shutdown::Draining);
//! let response = error_response::<String>(&err).expect("a palisade error");
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//!
//! let other: BoxError = "not ours".into();
//! assert!(error_response::<String>(&other).is_none());
//! ```

use http::Response;

pub use palisade_core::{BoxError, retry_after_secs};

/// The response for `error` if it is (or wraps) a palisade error, else
/// `None` (map the error yourself: a timeout, an upstream failure...).
///
/// See the [module docs](self) for the mapping.
pub fn error_response<B: Default>(error: &BoxError) -> Option<Response<B>> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = current {
        if let Some(response) = one(e) {
            return Some(response);
        }
        current = e.source();
    }
    None
}

fn one<B: Default>(e: &(dyn std::error::Error + 'static)) -> Option<Response<B>> {
    #[cfg(feature = "ratelimit")]
    {
        use palisade_ratelimit::http::{Headers, missing_key_response, too_many_requests};
        if let Some(limited) = e.downcast_ref::<palisade_ratelimit::RateLimited>() {
            return Some(too_many_requests(limited, &Headers::default()));
        }
        if let Some(missing) = e.downcast_ref::<palisade_ratelimit::MissingKey>() {
            return Some(missing_key_response(missing));
        }
    }
    #[cfg(feature = "breaker")]
    if let Some(rejected) = e.downcast_ref::<palisade_breaker::Rejected>() {
        return Some(palisade_breaker::http::rejected_response(rejected));
    }
    #[cfg(feature = "shutdown")]
    if e.is::<palisade_shutdown::Draining>() {
        return Some(palisade_shutdown::http::draining_response(
            palisade_shutdown::http::DEFAULT_RETRY_AFTER,
            http::Version::HTTP_11,
        ));
    }
    #[cfg(feature = "batch")]
    if let Some(batch) = e.downcast_ref::<palisade_batch::Error>() {
        // A failed batch answers as what failed it: its source, which the
        // walk in `error_response` looks at next.
        if !matches!(batch, palisade_batch::Error::Failed(_)) {
            return Some(palisade_batch::http::error_response(batch));
        }
    }
    let _ = e;
    None
}
