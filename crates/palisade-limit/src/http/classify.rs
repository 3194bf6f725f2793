//! What counts as a drop for HTTP and gRPC.

use http::{HeaderMap, Response, StatusCode};
use palisade_core::classify::{Classify, Outcome};
use palisade_core::grpc::{self, Code};

/// Classifies an HTTP call for the limit: a *drop* (the layer below or the
/// upstream says it is overloaded) is a [`Outcome::Failure`].
///
/// Drops: `503 Service Unavailable`, `429 Too Many Requests`, a gRPC status
/// `RESOURCE_EXHAUSTED` or `UNAVAILABLE` (in a trailers-only head, or in the
/// trailers at the body's end with [`AtBodyEnd`](super::AtBodyEnd)), and an
/// `Err` (a timeout, a connection that failed). Every other response is a
/// success: a `500` is the application's bug, not overload, and its latency
/// is as good a sample as any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropClassifier;

impl DropClassifier {
    /// Whether a response head says the call was dropped.
    #[inline]
    pub fn is_drop(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => true,
            // A gRPC status rides on a 200 whose content-type says gRPC
            // (a lookup of a standard header, cheaper than `grpc-status`'s).
            StatusCode::OK => grpc::is_grpc(headers) && self.is_grpc_drop(headers),
            _ => false,
        }
    }

    /// Whether trailers (or a trailers-only head) carry a gRPC status that
    /// means overload.
    pub fn is_grpc_drop(&self, headers: &HeaderMap) -> bool {
        matches!(
            grpc::status(headers),
            Some(Code::ResourceExhausted | Code::Unavailable)
        )
    }
}

impl<B, E> Classify<Response<B>, E> for DropClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if self.is_drop(response.status(), response.headers()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}
