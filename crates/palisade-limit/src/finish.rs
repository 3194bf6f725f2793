//! Where a call's slot ends: when its response future completes, or (HTTP)
//! when its response body does.

use palisade_core::classify::{Classify, DefaultClassifier};

use crate::BoxError;
use crate::error::Overloaded;
use crate::limiter::Permit;

/// Ends a call: classifies its result and gives its [`Permit`] back, now or
/// later (the HTTP [`AtBodyEnd`](crate) moves it into the response body).
pub trait Finish<T> {
    /// What the service answers.
    type Output;

    /// Ends the call with `result`.
    fn finish(&self, result: Result<T, BoxError>, permit: Permit)
    -> Result<Self::Output, BoxError>;

    /// Answers a refused call: by default the [`Overloaded`] error;
    /// `in_band` (from the request policy) asks for an answer the protocol
    /// carries instead (a gRPC status).
    fn refused(&self, error: Overloaded, in_band: bool) -> Result<Self::Output, BoxError> {
        let _ = in_band;
        Err(error.into())
    }
}

/// Ends a call when its response future completes, with the outcome
/// classifier `C` says: `Failure` is a drop (overload), `Ignored` no sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtCompletion<C = DefaultClassifier>(pub C);

impl<T, C> Finish<T> for AtCompletion<C>
where
    C: Classify<T, BoxError>,
{
    type Output = T;

    #[inline]
    fn finish(&self, result: Result<T, BoxError>, permit: Permit) -> Result<T, BoxError> {
        permit.record(self.0.classify(&result));
        result
    }
}
