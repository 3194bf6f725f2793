//! What the limit reads from a request: its class and its caller's deadline.

use std::time::Duration;

use tokio::time::Instant;

/// What the limit learns from a request before it starts it.
///
/// The defaults know nothing: class 0, no deadline, not gRPC.
/// [`http::HttpPolicy`](crate) (feature `http`) reads `grpc-timeout`, a
/// deadline header and the [`Deadline`] extension, and classes from a
/// function of the request head.
pub trait RequestPolicy<Req> {
    /// The request's class: an index into the limiter's classes, highest
    /// priority first (ignored by a limiter without classes).
    fn class(&self, _req: &Req) -> usize {
        0
    }

    /// When the caller stops waiting for the answer, if it said; `waited`
    /// is how long the request already waited in the limiter's queue (a
    /// relative timeout read from the request started before that). A
    /// request whose deadline has passed is refused
    /// ([`Reason::DeadlineExceeded`](crate::Reason::DeadlineExceeded))
    /// instead of started.
    fn deadline(&self, _req: &Req, _waited: Duration) -> Option<Instant> {
        None
    }

    /// Tells the layers below (and the upstream) how long is left, once the
    /// request is admitted: a reduced `grpc-timeout`, say.
    fn propagate(&self, _req: &mut Req, _remaining: Duration) {}

    /// Whether a refusal should be answered in band (a gRPC trailers-only
    /// status) rather than as an error.
    fn in_band(&self, _req: &Req) -> bool {
        false
    }
}

/// The policy that reads nothing from requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPolicy;

impl<Req> RequestPolicy<Req> for NoPolicy {}

/// A deadline carried in a request's extensions (for HTTP requests): the
/// instant the caller stops waiting. Read by `http::HttpPolicy`, and set
/// there for the layers below once a request is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);
