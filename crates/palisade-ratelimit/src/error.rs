//! Errors of this crate.

use std::{error::Error, fmt, time::Duration};

use crate::{Decision, Quota};

/// An invalid [`Quota`](crate::Quota) or limiter configuration, naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// A required field was not set.
    Missing {
        /// The field's name.
        field: &'static str,
    },
    /// A field that must be positive was zero.
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// The value of a field makes the quota unrepresentable (more than one
    /// cell per nanosecond, or a refill time beyond 2^62 ns).
    Overflow {
        /// The field's name.
        field: &'static str,
    },
}

impl QuotaError {
    /// The name of the offending field.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field } | Self::Zero { field } | Self::Overflow { field } => field,
        }
    }
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { field } => write!(f, "invalid rate limit: `{field}` is required"),
            Self::Zero { field } => write!(f, "invalid rate limit: `{field}` must be positive"),
            Self::Overflow { field } => write!(f, "invalid rate limit: `{field}` is out of range"),
        }
    }
}

impl Error for QuotaError {}

/// A request cost more cells than the quota's burst, so it can never be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientCapacity {
    /// The quota's burst: the most a single request may cost.
    pub burst: u32,
}

impl fmt::Display for InsufficientCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request costs more than the burst of {} cells",
            self.burst
        )
    }
}

impl Error for InsufficientCapacity {}

/// The error a [`RateLimit`](crate::RateLimit) service returns for a request
/// over its limit (reject mode).
///
/// It carries the policy that rejected the request and its decision, so the
/// HTTP mapping can set `Retry-After` and the `RateLimit` fields; see
/// [`http::too_many_requests`](crate::http) with the `http` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) policy: &'static str,
    pub(crate) quota: Quota,
    pub(crate) decision: Decision,
}

impl RateLimited {
    /// The name of the policy that rejected the request.
    pub fn policy(&self) -> &'static str {
        self.policy
    }

    /// The quota of that policy (the key's override, if it has one).
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The rejecting decision.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// Time until the request would be admitted.
    pub fn retry_after(&self) -> Duration {
        self.decision.retry_after()
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited by policy `{}`; retry after {:?}",
            self.policy,
            self.decision.retry_after()
        )
    }
}

impl Error for RateLimited {}

/// A keyed policy found no key in a request (for example [`PeerIp`] when the
/// server put no `SocketAddr` in the request extensions), and is not set to
/// [`allow_missing`](crate::PerKey::allow_missing).
///
/// A missing key is a deployment error, not a client's: the request is
/// refused (the HTTP layer answers `500 Internal Server Error`) rather than
/// silently passing unlimited. The first one per policy is logged at error
/// level; every one is counted in
/// [`MISSING_KEY`](crate::metrics::MISSING_KEY).
///
/// [`PeerIp`]: https://docs.rs/palisade-ratelimit/latest/palisade_ratelimit/http/struct.PeerIp.html
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingKey {
    pub(crate) policy: &'static str,
    pub(crate) missing: &'static str,
}

impl MissingKey {
    /// The name of the policy that found no key.
    pub fn policy(&self) -> &'static str {
        self.policy
    }

    /// What the request lacked, as the extractor describes it
    /// ([`KeyExtractor::missing`](crate::KeyExtractor::missing)).
    pub fn missing(&self) -> &'static str {
        self.missing
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit policy `{}` found no key: the request has no {}",
            self.policy, self.missing
        )
    }
}

impl Error for MissingKey {}

/// A type-erased error: the one definition all palisade crates share (the
/// same type as `tower::BoxError`).
pub use palisade_core::BoxError;
