//! Deciding how a call counts: the one classifier shape of palisade's
//! policies.
//!
//! The circuit breaker reads [`Outcome::Failure`] as a failure of the
//! upstream; the adaptive concurrency limit (palisade-limit) reads it as a
//! *drop*, a sign of overload. Both take a [`Classify`], so one classifier
//! type can serve both, and a user writes the rule once.

use std::fmt;

/// How one call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream is healthy as far as this call shows.
    Success,
    /// The call counts against the upstream.
    Failure,
    /// The call says nothing about the upstream's health (a client error, a
    /// deliberate cancellation): not recorded, and a half-open probe that
    /// ends ignored gives its slot back.
    Ignored,
}

/// Classifies the result of a call.
///
/// A call whose response future is dropped before it completes (cancelled)
/// is never classified: it counts as neither success nor failure.
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// The default classifier: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// A classifier from a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClassifyFn").finish()
    }
}

/// Uses a closure as a classifier.
///
/// ```
/// use palisade_core::classify::{classify_fn, Outcome};
///
/// // Timeouts say the upstream is slow; "not found" says nothing about it.
/// let classifier = classify_fn(|result: &Result<u16, std::io::Error>| match result {
///     Ok(404) => Outcome::Ignored,
///     Ok(status) if *status >= 500 => Outcome::Failure,
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure,
/// });
/// # let _ = classifier;
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

impl<F, T, E> Classify<T, E> for ClassifyFn<F>
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        (self.0)(result)
    }
}
