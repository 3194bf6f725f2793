//! Error types.

use std::fmt;

/// Errors of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The request arrived after draining started and was refused without
    /// reaching the inner service. It is safe to retry elsewhere: nothing of
    /// it was processed. The `http` mode answers it with
    /// `503 Service Unavailable`, `Retry-After` and `Connection: close`.
    Draining,
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
            Error::Draining => f.write_str("service is draining for shutdown"),
            Error::InvalidConfig { field, reason } => {
                write!(f, "invalid shutdown configuration: `{field}` {reason}")
            }
            Error::AlreadyStarted => f.write_str("shutdown has already started"),
        }
    }
}

impl std::error::Error for Error {}
