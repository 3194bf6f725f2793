//! Error types.

use std::fmt;

/// Configuration and lifecycle errors (an invalid value, a phase added too
/// late). The request path's error is [`Draining`], a separate type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid.
    InvalidConfig {
        /// The offending field, e.g. `"phase.name"`.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// [`Shutdown::add_phase`](crate::Shutdown::add_phase) was called after
    /// the shutdown had started.
    AlreadyStarted,
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig { field, reason } => {
                write!(f, "invalid shutdown configuration: `{field}` {reason}")
            }
            Error::AlreadyStarted => f.write_str("shutdown has already started"),
        }
    }
}

impl std::error::Error for Error {}

/// The request-path error: the request arrived after draining started and
/// was refused without reaching the inner service. It is safe to retry
/// elsewhere: nothing of it was processed.
///
/// Returned (boxed) by the generic [`DrainLayer`](crate::DrainLayer)'s
/// services; the `http` mode answers it itself with `503 Service
/// Unavailable`, `Retry-After` and `Connection: close`
/// ([`http::draining_response`](crate::http)). Configuration and lifecycle
/// errors are [`Error`], never this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Draining;

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service is draining for shutdown")
    }
}

impl std::error::Error for Draining {}
