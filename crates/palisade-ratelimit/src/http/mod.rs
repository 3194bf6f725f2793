//! HTTP mapping (feature `http`): 429 responses with `Retry-After` and the
//! IETF `RateLimit-Policy` / `RateLimit` fields, an HTTP-aware layer that
//! answers 429 itself, and key extractors for requests.
//!
//! # Header fields
//!
//! Following draft-ietf-httpapi-ratelimit-headers, each policy is described as
//! `RateLimit-Policy: "<name>";q=<burst>;w=<window>` where the window is the
//! time a drained quota takes to refill (`burst × period / rate`, whole
//! seconds rounded up), and its current state as
//! `RateLimit: "<name>";r=<remaining>;t=<reset>` where `t` is the seconds
//! until the quota is full again (rounded up). On a 429 the fields describe
//! the policy that rejected, and `Retry-After` is the wait in whole seconds,
//! rounded **up** and never 0. On an admitted response (when
//! [`Headers::on_admitted`] is set) they describe the admitting policy with
//! the fewest remaining cells. Legacy `X-RateLimit-Limit`, `-Remaining` and
//! `-Reset` (delta seconds) are available with [`Headers::legacy`].
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use palisade_ratelimit::{KeyedLimiter, PerKey, Quota};
//! use palisade_ratelimit::http::{Headers, HttpRateLimitLayer, PeerIp};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let per_ip = PerKey::new(
//!     KeyedLimiter::builder(Quota::per_second(1)?).name("per-ip").build()?,
//!     PeerIp::new(),
//! );
//! let svc = ServiceBuilder::new()
//!     .layer(HttpRateLimitLayer::new(per_ip).headers(Headers::default()))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(())) });
//!
//! // The server puts the peer address in the request extensions.
//! let request = || {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 7], 40_000)));
//!     req
//! };
//! let ok = svc.clone().oneshot(request()).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//! assert_eq!(ok.headers()["ratelimit"], "\"per-ip\";r=0;t=1");
//! let limited = svc.oneshot(request()).await?;
//! assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(limited.headers()["retry-after"], "1");
//! assert_eq!(limited.headers()["ratelimit-policy"], "\"per-ip\";q=1;w=1");
//! # Ok(())
//! # }
//! ```

mod extract;
mod service;

pub use extract::{
    ClientIp, DEFAULT_HEADER_KEY_LEN, DEFAULT_IPV6_PREFIX, ForwardedHeader, Global, HeaderKey,
    PeerAddr, PeerIp, PeerLookup, RouteKey,
};
pub use service::{HttpRateLimit, HttpRateLimitLayer, ResponseFuture};

use std::{cell::RefCell, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header::RETRY_AFTER};

use crate::{MissingKey, RateLimited, Report};

/// The `RateLimit-Policy` header name.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header name.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The legacy `X-RateLimit-Limit` header name.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// The legacy `X-RateLimit-Remaining` header name.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// The legacy `X-RateLimit-Reset` header name.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which rate limit header fields to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// `RateLimit-Policy` and `RateLimit` (default on).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (default off).
    pub legacy: bool,
    /// Also send them on admitted responses (default on). `Retry-After` is
    /// always sent on a 429.
    pub on_admitted: bool,
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            ietf: true,
            legacy: false,
            on_admitted: true,
        }
    }
}

impl Headers {
    /// No rate limit fields at all (a 429 still carries `Retry-After`).
    pub fn none() -> Self {
        Self {
            ietf: false,
            legacy: false,
            on_admitted: false,
        }
    }

    /// Sets [`Headers::legacy`].
    pub fn legacy(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
    }

    /// Sets [`Headers::on_admitted`].
    pub fn on_admitted(mut self, on_admitted: bool) -> Self {
        self.on_admitted = on_admitted;
        self
    }

    /// Writes the fields for `report` into `headers` (replacing existing ones).
    ///
    /// This runs on every admitted response when [`Headers::on_admitted`] is
    /// set, so it is kept cheap: each thread keeps the last few values of
    /// both fields and clones a value it built before (a reference count, no
    /// allocation). `RateLimit-Policy` is constant for a policy and quota;
    /// `RateLimit` repeats whenever the remaining count and reset do, as on
    /// every response to a client well below its limit. A value not cached
    /// is assembled on the stack (integers with `itoa`) and copied once into
    /// its [`HeaderValue`], with no `format!` machinery and no intermediate
    /// `String`.
    pub fn apply(&self, report: &Report, headers: &mut HeaderMap) {
        let limit = report.quota.burst();
        let remaining = report.decision.remaining();
        let reset = ceil_secs(report.decision.reset_after());
        if self.ietf {
            let window = ceil_secs(report.quota.window()).max(1);
            headers.insert(
                RATELIMIT_POLICY.clone(),
                policy_value(report.policy, limit, window),
            );
            headers.insert(
                RATELIMIT.clone(),
                ratelimit_value(report.policy, remaining, reset),
            );
        }
        if self.legacy {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
        }
    }
}

pub use palisade_core::retry_after_secs;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// How many values of each field each thread keeps: a request reports one
/// policy; a few cover a tuple of policies and keys with quota overrides
/// (`RateLimit-Policy`), or a few clients near their limits (`RateLimit`).
const VALUE_CACHE: usize = 4;

/// A field value and what it was built from.
struct CachedValue {
    name: &'static str,
    a: u64,
    b: u64,
    value: HeaderValue,
}

/// The last [`VALUE_CACHE`] values of one field, replaced oldest first.
struct ValueCache {
    slots: [Option<CachedValue>; VALUE_CACHE],
    next: usize,
}

impl ValueCache {
    const fn new() -> Self {
        Self {
            slots: [const { None }; VALUE_CACHE],
            next: 0,
        }
    }

    fn get_or_build(
        &mut self,
        name: &'static str,
        a: u64,
        b: u64,
        build: impl FnOnce() -> HeaderValue,
    ) -> HeaderValue {
        let hit = self
            .slots
            .iter()
            .flatten()
            .find(|c| c.a == a && c.b == b && c.name == name);
        if let Some(cached) = hit {
            return cached.value.clone();
        }
        let value = build();
        self.slots[self.next] = Some(CachedValue {
            name,
            a,
            b,
            value: value.clone(),
        });
        self.next = (self.next + 1) % VALUE_CACHE;
        value
    }
}

thread_local! {
    /// Per thread, so a hit is an uncontended reference count increment
    /// rather than an atomic on a cache line shared by every core. One cache
    /// per field, so `RateLimit` values that keep changing never evict the
    /// constant `RateLimit-Policy` ones.
    static POLICY_VALUES: RefCell<ValueCache> = const { RefCell::new(ValueCache::new()) };
    static RATELIMIT_VALUES: RefCell<ValueCache> = const { RefCell::new(ValueCache::new()) };
}

/// `name`'s `a`/`b` value from `cache`, built by `build` when it is not
/// there (or when the cache is gone: thread teardown).
fn cached(
    cache: &'static std::thread::LocalKey<RefCell<ValueCache>>,
    name: &'static str,
    a: u64,
    b: u64,
    build: impl FnOnce() -> HeaderValue,
) -> HeaderValue {
    let mut build = Some(build);
    cache
        .try_with(|c| {
            let build = build.take().expect("built once");
            c.borrow_mut().get_or_build(name, a, b, build)
        })
        .unwrap_or_else(|_| (build.take().expect("built once"))())
}

/// The `RateLimit-Policy` value `"<name>";q=<limit>;w=<window>`.
fn policy_value(name: &'static str, limit: u32, window: u64) -> HeaderValue {
    cached(&POLICY_VALUES, name, limit.into(), window, || {
        structured(name, b";q=", limit.into(), b";w=", window)
    })
}

/// The `RateLimit` value `"<name>";r=<remaining>;t=<reset>`.
fn ratelimit_value(name: &'static str, remaining: u32, reset: u64) -> HeaderValue {
    cached(&RATELIMIT_VALUES, name, remaining.into(), reset, || {
        structured(name, b";r=", remaining.into(), b";t=", reset)
    })
}

/// Values up to this many bytes are assembled on the stack; a longer one
/// (only possible with a policy name over ~80 bytes) goes through a `Vec`.
const STACK_VALUE: usize = 128;

/// The structured field value `"<name>"<k1><v1><k2><v2>`, for example
/// `"per-ip";r=4;t=1`.
fn structured(name: &str, k1: &[u8], v1: u64, k2: &[u8], v2: u64) -> HeaderValue {
    let (mut d1, mut d2) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 7] = [
        b"\"",
        name.as_bytes(),
        b"\"",
        k1,
        d1.format(v1).as_bytes(),
        k2,
        d2.format(v2).as_bytes(),
    ];
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let value = if len <= STACK_VALUE {
        let mut buf = [0u8; STACK_VALUE];
        let mut at = 0;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        HeaderValue::from_bytes(&buf[..len])
    } else {
        HeaderValue::from_bytes(&parts.concat())
    };
    // Policy names are `&'static str` chosen by the operator; one that is not
    // a valid header value degrades to an empty name rather than a panic.
    value.unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// The 429 response for a rejection: `Retry-After` plus the fields `headers`
/// enables, and an empty (default) body.
///
/// Use it to map the [`RateLimited`] error of the core layer (for example in
/// an axum `HandleErrorLayer`); [`HttpRateLimitLayer`] does it for you.
pub fn too_many_requests<B: Default>(limited: &RateLimited, headers: &Headers) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let map = response.headers_mut();
    map.insert(
        RETRY_AFTER,
        HeaderValue::from(retry_after_secs(limited.retry_after())),
    );
    headers.apply(
        &Report {
            policy: limited.policy,
            quota: limited.quota,
            decision: limited.decision,
        },
        map,
    );
    response
}

/// The trailers-only gRPC response for a rejected gRPC call: `grpc-status`
/// `code` ([`palisade_core::grpc::RATE_LIMITED`] unless configured
/// otherwise), a `grpc-message` naming the policy, `grpc-retry-pushback-ms`
/// with the wait (rounded up to whole milliseconds, never 0), and the fields
/// `headers` enables as metadata.
pub fn grpc_rate_limited<B: Default>(
    limited: &RateLimited,
    headers: &Headers,
    code: palisade_core::grpc::Code,
) -> Response<B> {
    let mut message = String::with_capacity(24 + limited.policy.len());
    message.push_str("rate limited by policy ");
    message.push_str(limited.policy);
    let mut response =
        palisade_core::grpc::trailers_only(code, &message, Some(limited.retry_after()));
    headers.apply(
        &Report {
            policy: limited.policy,
            quota: limited.quota,
            decision: limited.decision,
        },
        response.headers_mut(),
    );
    response
}

/// The gRPC form of [`missing_key_response`]: trailers-only `INTERNAL`, with
/// no detail (the policy logs what was missing).
pub fn grpc_missing_key<B: Default>(missing: &MissingKey) -> Response<B> {
    let _ = missing;
    palisade_core::grpc::trailers_only(palisade_core::grpc::Code::Internal, "", None)
}

/// The response for a request a keyed policy found no key in: `500 Internal
/// Server Error` with an empty body (a deployment error; the policy logs
/// what was missing, the client learns nothing about the setup).
pub fn missing_key_response<B: Default>(missing: &MissingKey) -> Response<B> {
    let _ = missing;
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_matches_format_on_the_stack_and_past_it() {
        let long: &'static str = "a-policy-name-".repeat(12).leak();
        assert!(long.len() > STACK_VALUE);
        for name in ["", "per-ip", long] {
            for (v1, v2) in [(0, 0), (1, 60), (u64::MAX, u64::MAX)] {
                let expected = format!("\"{name}\";r={v1};t={v2}");
                assert_eq!(structured(name, b";r=", v1, b";t=", v2), expected);
            }
        }
    }

    #[test]
    fn invalid_name_degrades_to_an_empty_name() {
        assert_eq!(structured("bad\nname", b";q=", 1, b";w=", 1), "\"\"");
        assert_eq!(policy_value("bad\nname", 1, 1), "\"\"");
    }

    #[test]
    fn value_caches_return_the_value_of_each_key_across_evictions() {
        // More distinct keys than cache slots, visited repeatedly and
        // interleaved across both fields, so hits, misses and evictions all
        // happen; every value must be exact.
        let keys: Vec<(&'static str, u32, u64)> = ["a", "b", "c"]
            .into_iter()
            .flat_map(|name| [(name, 10, 1), (name, 10, 60), (name, 20, 60)])
            .collect();
        assert!(keys.len() > VALUE_CACHE);
        for round in 0..5 {
            for &(name, x, y) in keys.iter().cycle().skip(round).take(keys.len() * 2) {
                assert_eq!(policy_value(name, x, y), format!("\"{name}\";q={x};w={y}"));
                assert_eq!(
                    ratelimit_value(name, x, y),
                    format!("\"{name}\";r={x};t={y}")
                );
            }
        }
    }
}
