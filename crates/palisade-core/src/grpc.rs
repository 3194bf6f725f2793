//! gRPC status codes and the one rule for answering a palisade rejection to
//! a gRPC client (feature `grpc`).
//!
//! A request is gRPC when its `content-type` starts with `application/grpc`
//! ([`is_grpc`]). A gRPC client reads the outcome of a call from
//! `grpc-status`, not from the HTTP status: to a tonic client an HTTP 429 is
//! just `UNAVAILABLE` with no message, indistinguishable from a dead server.
//! So the HTTP layers of palisade answer a rejected gRPC request with a
//! *trailers-only* response ([`trailers_only`]): HTTP 200, `content-type:
//! application/grpc`, `grpc-status`, `grpc-message` and, where the gRPC retry
//! design uses it, `grpc-retry-pushback-ms`, all in the one header block.
//!
//! | rejection | gRPC status | pushback |
//! |---|---|---|
//! | rate limited | [`RATE_LIMITED`] (`RESOURCE_EXHAUSTED`; a layer may be configured to send `UNAVAILABLE`) | the wait, in ms |
//! | breaker open | [`BREAKER_OPEN`] (`UNAVAILABLE`) | the time left open, in ms (none when forced open) |
//! | server draining | [`DRAINING`] (`UNAVAILABLE`) | none: retry on another connection at once |
//! | concurrency limit reached | [`OVERLOADED`] (`UNAVAILABLE`) | the limiter's retry hint, in ms |
//!
//! The breaker's gRPC classifier reads outcomes the same way ([`status`]).
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use palisade_core::grpc::{self, Code};
//! use std::time::Duration;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", HeaderValue::from_static("application/grpc+proto"));
//! assert!(grpc::is_grpc(&headers));
//!
//! let response = grpc::trailers_only::<()>(
//!     grpc::RATE_LIMITED,
//!     "rate limited",
//!     Some(Duration::from_micros(1500)),
//! );
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(grpc::status(response.headers()), Some(Code::ResourceExhausted));
//! assert_eq!(response.headers()["grpc-status"], "8");
//! assert_eq!(response.headers()["grpc-message"], "rate limited");
//! assert_eq!(response.headers()["grpc-retry-pushback-ms"], "2");
//! ```

use std::fmt;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

/// The `grpc-status` header (and trailer) name.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-message` header (and trailer) name.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// The `grpc-retry-pushback-ms` header name of the gRPC retry design (A6):
/// how long a client should wait before retrying.
pub static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The status a rate limit rejection is answered with by default:
/// `RESOURCE_EXHAUSTED`, the code gRPC defines for an exhausted quota.
pub const RATE_LIMITED: Code = Code::ResourceExhausted;
/// The status of a call refused by an open circuit breaker.
pub const BREAKER_OPEN: Code = Code::Unavailable;
/// The status of a call refused by a draining server.
pub const DRAINING: Code = Code::Unavailable;
/// The status of a call refused by an adaptive concurrency limit: the
/// server is at the concurrency it can take, so the client should try
/// another (or later).
pub const OVERLOADED: Code = Code::Unavailable;

/// A gRPC status code (the numbering of `grpc/status.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // The variants are the codes gRPC documents.
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

const VALUES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

impl Code {
    /// The code numbered `value`; any other number is `Unknown`, as the gRPC
    /// status specification asks clients to treat codes they do not know.
    pub fn from_i32(value: i32) -> Self {
        usize::try_from(value)
            .ok()
            .and_then(|i| CODES.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The code's number.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code's name as gRPC spells it, e.g. `"RESOURCE_EXHAUSTED"`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The `grpc-status` value (no allocation).
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(VALUES[self as usize])
    }

    /// The code a gRPC client reports for a response whose HTTP status is
    /// not 200 and that carries no `grpc-status` (the table of gRPC's
    /// "HTTP to gRPC status code mapping"): 400 `INTERNAL`, 401
    /// `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404 `UNIMPLEMENTED`, 429,
    /// 502, 503 and 504 `UNAVAILABLE`, anything else `UNKNOWN`.
    pub fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    /// Parses a `grpc-status` value: decimal digits; a number gRPC does not
    /// define is `Unknown`, text that is not a number is `None`.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let text = value.to_str().ok()?.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(text.parse::<i32>().map_or(Code::Unknown, Code::from_i32))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a request (or response) with these headers is gRPC: its
/// `content-type` starts with `application/grpc` (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`...).
#[inline]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// The `grpc-status` in `headers` (a trailers-only response's headers, or a
/// response's trailers), if there is one that parses.
pub fn status(headers: &HeaderMap) -> Option<Code> {
    headers.get(&GRPC_STATUS).and_then(Code::from_header)
}

/// Which protocol a request speaks, so one error-to-response mapping can
/// answer both: [`Protocol::of`] its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Plain HTTP: status codes, `Retry-After`.
    #[default]
    Http,
    /// gRPC: trailers-only responses with `grpc-status`.
    Grpc,
}

impl Protocol {
    /// The protocol of a request with these headers (see [`is_grpc`]).
    pub fn of(headers: &HeaderMap) -> Self {
        if is_grpc(headers) {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }
}

impl From<&HeaderMap> for Protocol {
    fn from(headers: &HeaderMap) -> Self {
        Protocol::of(headers)
    }
}

impl<B> From<&http::Request<B>> for Protocol {
    fn from(request: &http::Request<B>) -> Self {
        Protocol::of(request.headers())
    }
}

/// The `grpc-retry-pushback-ms` value for a client that may retry after
/// `wait`: whole milliseconds rounded **up** and never 0, for the reason
/// [`retry_after_secs`](crate::retry_after_secs) gives (0 would mean "retry
/// now"). Saturates at `u64::MAX`.
pub fn retry_pushback_ms(wait: Duration) -> u64 {
    let ms = wait.as_millis();
    let ms = ms + u128::from(!wait.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`,
/// `grpc-status: code`, `grpc-message: message` (percent-encoded as the gRPC
/// HTTP/2 mapping requires) and, when `pushback` is set,
/// `grpc-retry-pushback-ms` ([`retry_pushback_ms`]). The body is empty
/// (`B::default()`), which is what makes it trailers-only.
pub fn trailers_only<B: Default>(
    code: Code,
    message: &str,
    pushback: Option<Duration>,
) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), code.header_value());
    if !message.is_empty()
        && let Ok(value) = HeaderValue::from_str(&percent_encode(message))
    {
        headers.insert(GRPC_MESSAGE.clone(), value);
    }
    if let Some(wait) = pushback {
        headers.insert(
            GRPC_RETRY_PUSHBACK_MS.clone(),
            HeaderValue::from(retry_pushback_ms(wait)),
        );
    }
    response
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other
/// byte of the UTF-8 text as `%XX`.
fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The `grpc-timeout` header name: how long the caller waits for the call.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`
/// hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n`
/// nanoseconds), per gRPC over HTTP/2. Anything else is `None`.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
/// use palisade_core::grpc::{parse_timeout, timeout_value};
///
/// assert_eq!(parse_timeout(&HeaderValue::from_static("250m")), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout(&HeaderValue::from_static("2S")), Some(Duration::from_secs(2)));
/// assert_eq!(parse_timeout(&HeaderValue::from_static("123456789S")), None);
/// assert_eq!(parse_timeout(&HeaderValue::from_static("5x")), None);
/// assert_eq!(timeout_value(Duration::from_millis(1500)), "1500m");
/// ```
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `timeout`: milliseconds, rounded down, in the
/// largest unit whose count fits the 8 digits gRPC allows (at least `1m`
/// worth of precision is kept for anything under 27 hours).
pub fn timeout_value(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_millis();
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else if timeout.as_secs() < 100_000_000 {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}H", (timeout.as_secs() / 3600).min(99_999_999))
    };
    HeaderValue::try_from(text).expect("digits and a unit are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_numbers_are_unknown() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(Code::from_i32(i as i32), *code);
            assert_eq!(Code::from_header(&code.header_value()), Some(*code));
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        let parse = |s: &'static str| Code::from_header(&HeaderValue::from_static(s));
        assert_eq!(parse("99"), Some(Code::Unknown));
        assert_eq!(parse("99999999999999"), Some(Code::Unknown));
        assert_eq!(parse(" 14 "), Some(Code::Unavailable));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(
            Code::from_http_status(StatusCode::TOO_MANY_REQUESTS),
            Code::Unavailable
        );
        assert_eq!(
            Code::from_http_status(StatusCode::NOT_FOUND),
            Code::Unimplemented
        );
        assert_eq!(
            Code::from_http_status(StatusCode::INTERNAL_SERVER_ERROR),
            Code::Unknown
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn grpc_content_types() {
        let of = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(of("application/grpc"));
        assert!(of("application/grpc+proto"));
        assert!(of("Application/GRPC-web"));
        assert!(!of("application/json"));
        assert!(!of("application/grp"));
        assert!(!is_grpc(&HeaderMap::new()));
        assert_eq!(Protocol::of(&HeaderMap::new()), Protocol::Http);
    }

    #[test]
    fn pushback_rounds_up_and_is_never_zero() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_micros(1001), 2),
            (Duration::from_secs(3), 3000),
            (Duration::MAX, u64::MAX),
        ];
        for (wait, ms) in cases {
            assert_eq!(retry_pushback_ms(wait), ms, "{wait:?}");
        }
    }

    #[test]
    fn trailers_only_shape() {
        let r = trailers_only::<()>(Code::Unavailable, "50% \"open\"\né", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()[&GRPC_STATUS], "14");
        assert_eq!(r.headers()[&GRPC_MESSAGE], "50%25 \"open\"%0A%C3%A9");
        assert!(!r.headers().contains_key(&GRPC_RETRY_PUSHBACK_MS));
        let r = trailers_only::<()>(Code::Internal, "", None);
        assert!(!r.headers().contains_key(&GRPC_MESSAGE));
    }
}
