//! gRPC classification and rejections.

use http::{HeaderMap, Response, StatusCode};
use palisade_core::grpc::{self, Code};

use super::{ClassifyEnd, ClassifyResponse};
use crate::classify::Outcome;
use crate::error::Rejected;

/// Classifies gRPC calls by their `grpc-status`, read where gRPC puts it:
/// in the headers of a trailers-only response (decided at the head), or in
/// the trailers (decided when the body ends). Use it with
/// [`BodyEndLayer::classifier`](super::BodyEndLayer::classifier); a
/// head-only breaker cannot see trailers.
///
/// The default failure codes are those that say the server is unhealthy:
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN` and
/// `DATA_LOSS`. `CANCELLED` is ignored (the client gave up; nothing is
/// learned about the server). Every other code is a success: the server
/// answered, and `NOT_FOUND` or `INVALID_ARGUMENT` are the application's
/// business. `RESOURCE_EXHAUSTED` is a success by default because it is
/// mostly a *per-client* quota (palisade's own rate limit answers it):
/// counting it would let one greedy client open the breaker for everyone;
/// add it with [`with_failure`](Self::with_failure) when the upstream uses it
/// for overload.
///
/// A response without `grpc-status` is classified as the client would see
/// it: a non-200 HTTP status by gRPC's HTTP-to-gRPC mapping
/// ([`Code::from_http_status`]: 503 is `UNAVAILABLE`, ...), a body that ends
/// without a status as `UNKNOWN`.
///
/// ```
/// use palisade_breaker::http::GrpcClassifier;
/// use palisade_core::grpc::Code;
///
/// let c = GrpcClassifier::default();
/// assert!(c.is_failure(Code::Unavailable));
/// assert!(!c.is_failure(Code::NotFound));
/// let c = c.with_failure(Code::ResourceExhausted);
/// assert!(c.is_failure(Code::ResourceExhausted));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcClassifier {
    // One bit per code (17 codes).
    failures: u32,
    ignored: u32,
}

const fn bit(code: Code) -> u32 {
    1 << (code as u32)
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self {
            failures: bit(Code::Unavailable)
                | bit(Code::DeadlineExceeded)
                | bit(Code::Internal)
                | bit(Code::Unknown)
                | bit(Code::DataLoss),
            ignored: bit(Code::Cancelled),
        }
    }
}

impl GrpcClassifier {
    /// Exactly these codes are failures (`CANCELLED` stays ignored unless
    /// listed).
    pub fn from_codes(codes: impl IntoIterator<Item = Code>) -> Self {
        let mut this = Self {
            failures: 0,
            ignored: bit(Code::Cancelled),
        };
        for code in codes {
            this = this.with_failure(code);
        }
        this
    }

    /// Also counts `code` as a failure.
    pub fn with_failure(mut self, code: Code) -> Self {
        self.failures |= bit(code);
        self.ignored &= !bit(code);
        self
    }

    /// Counts `code` as neither success nor failure.
    pub fn with_ignored(mut self, code: Code) -> Self {
        self.ignored |= bit(code);
        self.failures &= !bit(code);
        self
    }

    /// Whether `code` counts as a failure.
    pub fn is_failure(&self, code: Code) -> bool {
        self.failures & bit(code) != 0
    }

    /// How a call that ended with `code` counts.
    pub fn outcome(&self, code: Code) -> Outcome {
        if self.failures & bit(code) != 0 {
            Outcome::Failure
        } else if self.ignored & bit(code) != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl ClassifyResponse for GrpcClassifier {
    type End = GrpcClassifier;

    #[inline]
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> Result<Outcome, Self> {
        if let Some(code) = grpc::status(headers) {
            // Trailers-only: the whole outcome is in the headers.
            return Ok(self.outcome(code));
        }
        if status != StatusCode::OK {
            return Ok(self.outcome(Code::from_http_status(status)));
        }
        Err(*self)
    }
}

impl ClassifyEnd for GrpcClassifier {
    #[inline]
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome {
        // A stream that ends without a status is `UNKNOWN` to the client.
        self.outcome(trailers.and_then(grpc::status).unwrap_or(Code::Unknown))
    }
}

/// The trailers-only gRPC response for a rejected call: `grpc-status`
/// [`UNAVAILABLE`](palisade_core::grpc::BREAKER_OPEN), a `grpc-message`
/// saying why, and `grpc-retry-pushback-ms` with the time until the next
/// probe when the rejection knows it (not for a breaker forced open).
pub fn grpc_rejected_response<B: Default>(rejected: &Rejected) -> Response<B> {
    let message = match rejected {
        Rejected::HalfOpenSaturated { .. } => "circuit breaker half-open, probe slots taken",
        Rejected::ForcedOpen => "circuit breaker forced open",
        _ => "circuit breaker open",
    };
    grpc::trailers_only(grpc::BREAKER_OPEN, message, rejected.retry_after())
}
