//! One mapping from every palisade error to its HTTP or gRPC response.
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
//! | `palisade_limit::Overloaded` | `503 Service Unavailable`, `Retry-After` |
//! | `palisade_shutdown::Draining` | `503 Service Unavailable`, `Retry-After`, `Connection: close` |
//! | `palisade_batch::Error::Failed` | what its source (the batch call's error) maps to, if a palisade error |
//! | `palisade_batch::Error::Closed`, `Cut` | `503 Service Unavailable`, `Retry-After` |
//! | `palisade_batch::Error::LengthMismatch` / `Panicked` | `502 Bad Gateway` / `500 Internal Server Error` |
//! | `palisade_pool::Error::Overloaded`, `Closed`, `Cut` / `Panicked` | `503 Service Unavailable`, `Retry-After` / `500 Internal Server Error` |
//!
//! Every `Retry-After` is [`retry_after_secs`]: rounded up, never 0. Bodies
//! are empty (`B::default()`); set your own on the returned response.
//!
//! # gRPC
//!
//! For a gRPC request ([`Protocol::Grpc`]: its `content-type` starts with
//! `application/grpc`) the same errors become trailers-only gRPC responses
//! (HTTP 200, `grpc-status`, `grpc-message`), with the codes of
//! [`palisade_core::grpc`]: a rate limit `RESOURCE_EXHAUSTED` with
//! `grpc-retry-pushback-ms`, an open breaker, a reached concurrency limit
//! (with `grpc-retry-pushback-ms`) and a draining server `UNAVAILABLE`, a missing key, a batch or pool failure `INTERNAL` or
//! `UNAVAILABLE` as their HTTP status maps. Pass the request's headers (or
//! the request) and the protocol is read from them:
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use palisade::http::{Protocol, error_response};
//! use tower::BoxError;
//!
//! let err: BoxError = Box::new(palisade::shutdown::Draining);
//! let response = error_response::<String>(&err, Protocol::Http).expect("a palisade error");
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", HeaderValue::from_static("application/grpc"));
//! let response = error_response::<String>(&err, &headers).expect("a palisade error");
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["grpc-status"], "14");
//!
//! let other: BoxError = "not ours".into();
//! assert!(error_response::<String>(&other, Protocol::Http).is_none());
//! ```
//!
//! In an axum `HandleErrorLayer`, take the request's `HeaderMap` as an
//! extractor: `HandleErrorLayer::new(|headers: HeaderMap, err: BoxError| async
//! move { error_response::<Body>(&err, &headers) ... })`.

use http::Response;

pub use palisade_core::grpc::Protocol;
pub use palisade_core::{BoxError, retry_after_secs};

/// The response for `error` if it is (or wraps) a palisade error, else
/// `None` (map the error yourself: a timeout, an upstream failure...).
/// `request` is the request's [`Protocol`], or its headers or the request
/// itself to read it from.
///
/// See the [module docs](self) for the mapping.
pub fn error_response<B: Default>(
    error: &BoxError,
    request: impl Into<Protocol>,
) -> Option<Response<B>> {
    let protocol = request.into();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = current {
        if let Some(response) = one(e, protocol) {
            return Some(response);
        }
        current = e.source();
    }
    None
}

fn one<B: Default>(
    e: &(dyn std::error::Error + 'static),
    protocol: Protocol,
) -> Option<Response<B>> {
    let grpc = protocol == Protocol::Grpc;
    #[cfg(feature = "ratelimit")]
    {
        use palisade_ratelimit::http::{
            Headers, grpc_missing_key, grpc_rate_limited, missing_key_response, too_many_requests,
        };
        if let Some(limited) = e.downcast_ref::<palisade_ratelimit::RateLimited>() {
            return Some(if grpc {
                grpc_rate_limited(
                    limited,
                    &Headers::default(),
                    palisade_core::grpc::RATE_LIMITED,
                )
            } else {
                too_many_requests(limited, &Headers::default())
            });
        }
        if let Some(missing) = e.downcast_ref::<palisade_ratelimit::MissingKey>() {
            return Some(if grpc {
                grpc_missing_key(missing)
            } else {
                missing_key_response(missing)
            });
        }
    }
    #[cfg(feature = "breaker")]
    if let Some(rejected) = e.downcast_ref::<palisade_breaker::Rejected>() {
        return Some(if grpc {
            palisade_breaker::http::grpc_rejected_response(rejected)
        } else {
            palisade_breaker::http::rejected_response(rejected)
        });
    }
    #[cfg(feature = "limit")]
    if let Some(overloaded) = e.downcast_ref::<palisade_limit::Overloaded>() {
        return Some(if grpc {
            palisade_limit::http::grpc_overloaded_response(overloaded)
        } else {
            palisade_limit::http::overloaded_response(overloaded)
        });
    }
    #[cfg(feature = "shutdown")]
    if e.is::<palisade_shutdown::Draining>() {
        return Some(if grpc {
            palisade_shutdown::http::grpc_draining_response()
        } else {
            palisade_shutdown::http::draining_response(
                palisade_shutdown::http::DEFAULT_RETRY_AFTER,
                http::Version::HTTP_11,
            )
        });
    }
    #[cfg(feature = "batch")]
    if let Some(batch) = e.downcast_ref::<palisade_batch::Error>() {
        // A failed batch answers as what failed it: its source, which the
        // walk in `error_response` looks at next.
        if !matches!(batch, palisade_batch::Error::Failed(_)) {
            return Some(as_protocol(
                palisade_batch::http::error_response(batch),
                grpc,
            ));
        }
    }
    #[cfg(feature = "pool")]
    if let Some(pool) = e.downcast_ref::<palisade_pool::Error>() {
        return Some(as_protocol(palisade_pool::http::error_response(pool), grpc));
    }
    let _ = (e, grpc);
    None
}

/// An HTTP error response as gRPC sees it, for errors that have no code of
/// their own: the status gRPC's HTTP-to-gRPC mapping gives its HTTP status
/// (503 `UNAVAILABLE`, 500 `UNKNOWN`...).
#[cfg(any(feature = "batch", feature = "pool"))]
fn as_protocol<B: Default>(response: Response<B>, grpc: bool) -> Response<B> {
    if !grpc {
        return response;
    }
    let code = palisade_core::grpc::Code::from_http_status(response.status());
    let pushback = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    palisade_core::grpc::trailers_only(code, "", pushback)
}
