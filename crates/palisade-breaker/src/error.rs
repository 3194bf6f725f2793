//! Error types.

use std::fmt;
use std::time::Duration;

/// A call the breaker refused to let through.
///
/// The service's error type is [`tower::BoxError`](https://docs.rs/tower/latest/tower/type.BoxError.html);
/// downcast to this type to tell a rejection from an inner error (the `http`
/// module does this to answer 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The breaker is open; the next probe is admitted after `retry_after`.
    Open {
        /// Time until the breaker admits probes again.
        retry_after: Duration,
    },
    /// The breaker is half-open and all its probe slots are taken.
    /// `retry_after` is an estimate: a slot frees when a probe completes.
    HalfOpenSaturated {
        /// Upper bound of the time until the half-open state ends or a new
        /// opening starts (never above the base wait).
        retry_after: Duration,
    },
    /// The breaker was forced open through its handle; there is no
    /// scheduled end.
    ForcedOpen,
}

impl Rejected {
    /// When a caller may try again, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Rejected::Open { retry_after } | Rejected::HalfOpenSaturated { retry_after } => {
                Some(retry_after)
            }
            Rejected::ForcedOpen => None,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Open { retry_after } => {
                write!(f, "circuit breaker is open; next probe in {retry_after:?}")
            }
            Rejected::HalfOpenSaturated { .. } => {
                f.write_str("circuit breaker is half-open and all probe slots are taken")
            }
            Rejected::ForcedOpen => f.write_str("circuit breaker is forced open"),
        }
    }
}

impl std::error::Error for Rejected {}

/// An invalid configuration value, naming the field (the one type every
/// palisade builder returns).
pub use palisade_core::ConfigError;

/// A [`ConfigError`] of this crate's configuration.
pub(crate) fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new("circuit breaker", field, reason)
}
