//! HTTP mapping of batch errors (feature `http`).
//!
//! | error | status |
//! |---|---|
//! | [`Error::Closed`], [`Error::Cut`] | `503 Service Unavailable` + `Retry-After: 1` |
//! | [`Error::Failed`], [`Error::LengthMismatch`] | `502 Bad Gateway`: the backend behind the batcher failed |
//! | [`Error::Panicked`] | `500 Internal Server Error` |
//!
//! `Retry-After` follows the one rule every palisade crate uses
//! ([`palisade_core::retry_after_secs`]: whole seconds, rounded up, never 0),
//! applied to [`DEFAULT_RETRY_AFTER`].

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::error::Error;

/// The wait a 503 suggests: a closed batcher belongs to a process that is
/// shutting down or whose backend died, so another instance should be tried
/// soon.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The status an item's failure maps to (see the module docs).
pub fn status(err: &Error) -> StatusCode {
    match err {
        Error::Closed(_) | Error::Cut => StatusCode::SERVICE_UNAVAILABLE,
        Error::Failed(_) | Error::LengthMismatch { .. } => StatusCode::BAD_GATEWAY,
        Error::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An empty-bodied response for `err`, with `Retry-After` on a 503.
pub fn error_response<B: Default>(err: &Error) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = status(err);
    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
        let secs = palisade_core::retry_after_secs(DEFAULT_RETRY_AFTER);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Closed;

    #[test]
    fn each_error_maps_to_its_status() {
        let r: Response<()> = error_response(&Error::Closed(Closed::Shutdown));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r: Response<()> = error_response(&Error::Cut);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r: Response<()> = error_response(&Error::LengthMismatch {
            sent: 2,
            received: 1,
        });
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r: Response<()> = error_response(&Error::Panicked("x".into()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
