//! HTTP mapping (feature `http`): 5xx responses as failures, rejections as
//! `503 Service Unavailable` with `Retry-After`, and [`BodyEndLayer`] to
//! classify a response when its body ends instead of at its head.
//!
//! gRPC: [`GrpcClassifier`] reads `grpc-status` from trailers-only headers
//! or from the trailers at the body's end (with [`BodyEndLayer`]), and
//! [`BodyEndLayer`] answers a rejected gRPC call with a trailers-only
//! `UNAVAILABLE` ([`grpc_rejected_response`]) instead of failing it.

mod body_end;
mod grpc;

pub use body_end::{BodyEnd, BodyEndFuture, BodyEndLayer, BreakerBody};
pub use grpc::{GrpcClassifier, grpc_rejected_response};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::classify::{Classify, Outcome};
use crate::error::Rejected;

/// Classifies HTTP responses: an `Err` or a response whose status is in the
/// failure set is a failure, anything else a success.
///
/// The default failure set is every 5xx status. A 4xx says the client erred,
/// not the upstream, so it is a success by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    // One bit per status code 0..1024 (StatusCode is at most 999).
    failures: [u64; 16],
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::server_errors()
    }
}

impl HttpClassifier {
    /// Every 5xx status is a failure.
    pub fn server_errors() -> Self {
        Self::from_statuses((500..=599).filter_map(|s| StatusCode::from_u16(s).ok()))
    }

    /// Exactly these statuses are failures (for example only 502, 503 and
    /// 504, leaving a 500 from a buggy endpoint to the application).
    pub fn from_statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let mut this = Self { failures: [0; 16] };
        for status in statuses {
            this = this.with_status(status);
        }
        this
    }

    /// Also counts `status` as a failure.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        self.failures[code / 64] |= 1 << (code % 64);
        self
    }

    /// Whether `status` counts as a failure.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.failures[code / 64] & (1 << (code % 64)) != 0
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if self.is_failure(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// How [`BodyEndLayer`] classifies a response: at its head if the head
/// decides, otherwise when its body ends.
pub trait ClassifyResponse {
    /// What decides at the body's end, carried in the [`BreakerBody`] (keep
    /// it small: it travels with every undecided response).
    type End: ClassifyEnd;

    /// `Ok(outcome)` when the status and headers decide the call (a 5xx, a
    /// trailers-only gRPC status), else `Err(end)` to decide at the end.
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> Result<Outcome, Self::End>;
}

/// Decides a call when its response body ends; see [`ClassifyResponse`].
pub trait ClassifyEnd {
    /// The outcome of a body that ended, with its trailers if it had any.
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome;
}

/// The body-end rule of [`HttpClassifier`]: a body read to its end is a
/// success, whatever its trailers say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpEnd;

impl ClassifyEnd for HttpEnd {
    #[inline]
    fn classify_end(&self, _trailers: Option<&HeaderMap>) -> Outcome {
        Outcome::Success
    }
}

impl ClassifyResponse for HttpClassifier {
    type End = HttpEnd;

    #[inline]
    fn classify_head(&self, status: StatusCode, _headers: &HeaderMap) -> Result<Outcome, HttpEnd> {
        if self.is_failure(status) {
            Ok(Outcome::Failure)
        } else {
            Err(HttpEnd)
        }
    }
}

pub use palisade_core::retry_after_secs;

/// The response for a rejected call: `503 Service Unavailable`, with
/// `Retry-After` (seconds, rounded up) when the rejection knows when to retry
/// (not for a breaker forced open).
pub fn rejected_response<B: Default>(rejected: &Rejected) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    if let Some(after) = rejected.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
    }
    response
}

/// If `error` (for example a service's `BoxError`) is a [`Rejected`], the
/// 503 response for it.
pub fn response_for_error<B: Default>(
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> Option<Response<B>> {
    error.downcast_ref::<Rejected>().map(rejected_response)
}
