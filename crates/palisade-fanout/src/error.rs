//! Error types.

use std::fmt;

use tower::BoxError;

/// An invalid configuration value, naming the field (the one type every
/// palisade builder returns).
pub use palisade_core::ConfigError;

/// A [`ConfigError`] of this crate's configuration.
pub(crate) fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new("fan-out", field, reason)
}

/// Why one branch of a scatter call produced no response.
#[derive(Debug)]
#[non_exhaustive]
pub enum BranchError {
    /// The branch's service failed, in `poll_ready` or in its response
    /// future.
    Service(BoxError),
    /// The branch's service did not become ready within the ready timeout;
    /// it was never called.
    NotReady,
    /// The branch did not answer within the per-branch timeout.
    TimedOut,
    /// The call's overall deadline passed before the branch answered.
    Deadline,
}

impl BranchError {
    /// The service's own error, if that is what happened.
    pub fn service_error(&self) -> Option<&BoxError> {
        match self {
            BranchError::Service(e) => Some(e),
            _ => None,
        }
    }

    /// A short stable name (`service`, `not_ready`, `timed_out`,
    /// `deadline`): the `outcome` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            BranchError::Service(_) => "service",
            BranchError::NotReady => "not_ready",
            BranchError::TimedOut => "timed_out",
            BranchError::Deadline => "deadline",
        }
    }
}

impl fmt::Display for BranchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BranchError::Service(e) => write!(f, "branch failed: {e}"),
            BranchError::NotReady => f.write_str("branch was not ready within the ready timeout"),
            BranchError::TimedOut => f.write_str("branch timed out"),
            BranchError::Deadline => f.write_str("the call's deadline passed"),
        }
    }
}

impl std::error::Error for BranchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BranchError::Service(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Every branch of a [`FirstOk`](crate::scatter::FirstOk) call failed; holds
/// each branch's failure, in branch order.
#[derive(Debug)]
pub struct AllFailed {
    pub(crate) failures: Vec<(usize, BranchError)>,
}

impl AllFailed {
    /// `(branch index, failure)` for every branch, in branch order.
    pub fn failures(&self) -> &[(usize, BranchError)] {
        &self.failures
    }

    /// The failures, consuming the error.
    pub fn into_failures(self) -> Vec<(usize, BranchError)> {
        self.failures
    }
}

impl fmt::Display for AllFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} branches failed", self.failures.len())?;
        for (i, e) in &self.failures {
            write!(f, "; branch {i}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AllFailed {}

/// A [`Quorum`](crate::scatter::Quorum) call could no longer reach `k`
/// successes (too many branches failed, or the deadline passed).
#[derive(Debug)]
pub struct QuorumFailed {
    pub(crate) needed: usize,
    pub(crate) succeeded: Vec<usize>,
    pub(crate) failures: Vec<(usize, BranchError)>,
}

impl QuorumFailed {
    /// The quorum size `k`.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// The branches that did succeed (their responses are dropped).
    pub fn succeeded(&self) -> &[usize] {
        &self.succeeded
    }

    /// `(branch index, failure)` of the failed branches, in the order they
    /// failed.
    pub fn failures(&self) -> &[(usize, BranchError)] {
        &self.failures
    }
}

impl fmt::Display for QuorumFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quorum of {} unreachable: {} succeeded, {} failed",
            self.needed,
            self.succeeded.len(),
            self.failures.len()
        )?;
        for (i, e) in &self.failures {
            write!(f, "; branch {i}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for QuorumFailed {}

/// A [`Spread`](crate::spread::Spread) call in
/// [`FailFast`](crate::spread::Failure::FailFast) mode stopped at the first
/// failed item; the items still in flight were cancelled.
#[derive(Debug)]
pub struct ItemFailed {
    pub(crate) index: usize,
    pub(crate) source: BoxError,
}

impl ItemFailed {
    /// The position of the failed item in the input.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The inner service's error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for ItemFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {} failed", self.index)
    }
}

impl std::error::Error for ItemFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
