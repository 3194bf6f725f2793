//! The answers to a refusal.

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use palisade_core::grpc;
use palisade_core::retry_after_secs;

use crate::Overloaded;

/// `503 Service Unavailable` with `Retry-After` (the refusal's hint,
/// rounded up to whole seconds, never 0) and an empty body.
pub fn overloaded_response<B: Default>(overloaded: &Overloaded) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(retry_after_secs(overloaded.retry_after())),
    );
    response
}

/// A trailers-only gRPC `UNAVAILABLE` (the code gRPC clients retry) with
/// `grpc-retry-pushback-ms` from the refusal's hint.
pub fn grpc_overloaded_response<B: Default>(overloaded: &Overloaded) -> Response<B> {
    grpc::trailers_only(
        grpc::OVERLOADED,
        "overloaded",
        Some(overloaded.retry_after()),
    )
}
