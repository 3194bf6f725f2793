//! HTTP mapping of pool errors (feature `http`).
//!
//! | error | status |
//! |---|---|
//! | [`Error::Overloaded`], [`Error::Closed`], [`Error::Cut`] | `503 Service Unavailable` + `Retry-After: 1` |
//! | [`Error::Panicked`] | `500 Internal Server Error` |
//!
//! `Retry-After` follows the one rule every palisade crate uses: whole
//! seconds, rounded up, never 0. A full pool frees a slot as soon as one job
//! ends, so the smallest allowed value, one second, is the honest hint.

use http::{HeaderValue, Response, StatusCode, header};

use crate::error::Error;

/// The status a pool failure maps to (see the module docs).
pub fn status(err: &Error) -> StatusCode {
    match err {
        Error::Overloaded | Error::Closed(_) | Error::Cut => StatusCode::SERVICE_UNAVAILABLE,
        Error::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An empty-bodied response for `err`, with `Retry-After` on a 503.
pub fn error_response<B: Default>(err: &Error) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = status(err);
    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Closed;

    #[test]
    fn each_error_maps_to_its_status() {
        for err in [
            Error::Overloaded,
            Error::Closed(Closed::Shutdown),
            Error::Cut,
        ] {
            let r: Response<()> = error_response(&err);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        }
        let r: Response<()> = error_response(&Error::Panicked("x".into()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
