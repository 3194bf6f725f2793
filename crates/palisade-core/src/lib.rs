//! The rules every palisade middleware shares, in one place so they cannot
//! drift apart:
//!
//! - [`retry_after_secs`]: how a wait becomes a `Retry-After` value (rounded
//!   up to whole seconds, never 0).
//! - [`classify`]: how a call counts (success, failure, ignored), for the
//!   breaker and the adaptive limit alike.
//! - [`clock`]: which clock a policy reads by default (tokio's when the
//!   runtime's clock is paused, else a fast monotonic clock).
//! - [`BoxError`]: the type-erased error of the services (the same type as
//!   `tower::BoxError`).
//! - [`ConfigError`]: an invalid configuration value, naming the field, as
//!   every builder's `build()` returns it.
//! - `grpc` (feature `grpc`): gRPC status codes, which code each palisade
//!   rejection is answered with, and how the breaker reads a call's outcome.
//! - [`task::spawn_named`]: how palisade spawns a task, named for
//!   tokio-console under `--cfg tokio_unstable`.
//! - [`SharedError`] and [`panic_message`]: how a worker-backed middleware
//!   (batching, pools) hands one failure, or a caught panic, to every caller
//!   it concerns.
//!
//! This crate is small on purpose and its API is stable: the pattern crates
//! (rate limiting, circuit breaking, shutdown, batching, fan-out) depend on
//! it, users normally reach it through them.
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::retry_after_secs;
//!
//! assert_eq!(retry_after_secs(Duration::ZERO), 1);
//! assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
//! assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
//! assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub mod classify;
pub mod clock;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod task;

/// A type-erased error: the error type of palisade's services, identical to
/// `tower::BoxError` (both are this alias), so errors of palisade layers and
/// tower layers meet without conversion.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An invalid configuration value, naming the field: what every palisade
/// builder's `build()` returns instead of panicking.
///
/// ```
/// let err = palisade_core::ConfigError::new("batch", "max_items", "must be at least 1");
/// assert_eq!(err.field(), "max_items");
/// assert_eq!(err.to_string(), "invalid batch configuration: `max_items` must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    reason: String,
}

impl ConfigError {
    /// `field` of `component` (e.g. `"circuit breaker"`, `"batch"`) is
    /// invalid because of `reason`.
    pub fn new(component: &'static str, field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            component,
            field,
            reason: reason.into(),
        }
    }

    /// What was being configured, e.g. `"batch"`.
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The offending field, as named by its builder method (e.g.
    /// `"max_items"`, `"sliding_window.size"`).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} configuration: `{}` {}",
            self.component, self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// An error shared by every caller it reaches (all callers of a failed
/// batch, say): the original error behind an `Arc`, since errors need not be
/// `Clone`.
#[derive(Clone)]
pub struct SharedError(Arc<BoxError>);

impl SharedError {
    /// Shares `err`.
    pub fn new(err: BoxError) -> Self {
        Self(Arc::new(err))
    }

    /// The original error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The message of a caught panic payload (`&str` and `String` payloads; any
/// other is named as such).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("(non-string panic payload)")
    }
}

/// The `Retry-After` value, in whole seconds, for a client that may retry
/// after `wait`.
///
/// Rounded **up** (a client that retries after the advertised seconds is
/// never early) and **never 0**: `Retry-After: 0` invites an immediate retry
/// loop, and a refusal with nothing left to wait for still costs the client
/// a round trip, so 1 second is the least we advertise. Saturates at
/// `u64::MAX`.
///
/// Every palisade response that carries `Retry-After` (429 from the rate
/// limiter, 503 from an open breaker or a draining server) uses this.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(59), 59),
            (Duration::MAX, u64::MAX),
        ];
        for (wait, secs) in cases {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }
}
