//! The rejection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a call was refused without reaching the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Every slot of the limit is taken (reject mode), or the wait queue is
    /// full (queue mode).
    LimitReached,
    /// The call waited the queue's maximum wait without getting a slot.
    QueueTimeout,
    /// The queue was standing and the call had waited more than twice the
    /// target delay (CoDel).
    QueueShed,
    /// The call's class was beyond its guaranteed share, and the free slots
    /// are held for other classes' guarantees.
    ClassShare,
    /// The caller's deadline had already passed: the call was not started.
    DeadlineExceeded,
}

impl Reason {
    /// Every reason, in metric-table order.
    pub const ALL: [Reason; 5] = [
        Reason::LimitReached,
        Reason::QueueTimeout,
        Reason::QueueShed,
        Reason::ClassShare,
        Reason::DeadlineExceeded,
    ];

    /// The `reason` metric label and log field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::LimitReached => "limit",
            Reason::QueueTimeout => "queue_timeout",
            Reason::QueueShed => "queue_shed",
            Reason::ClassShare => "class_share",
            Reason::DeadlineExceeded => "deadline",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused by the adaptive limit: the service is at the concurrency
/// it can take. HTTP answers it `503 Service Unavailable` with
/// `Retry-After`, gRPC `UNAVAILABLE` (see the `http` module and
/// `palisade::http::error_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overloaded {
    pub(crate) reason: Reason,
    pub(crate) limiter: Arc<str>,
    pub(crate) class: Option<&'static str>,
    pub(crate) retry_after: Duration,
}

impl Overloaded {
    /// Why the call was refused.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The name of the limiter that refused it.
    pub fn limiter(&self) -> &str {
        &self.limiter
    }

    /// The call's class, when the limiter has classes.
    pub fn class(&self) -> Option<&'static str> {
        self.class
    }

    /// How long the caller should wait before retrying (the limiter's
    /// `retry_after`; `Retry-After` rounds it up to whole seconds, never 0).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "overloaded: {} ({})", self.limiter, self.reason)?;
        if let Some(class) = self.class {
            write!(f, ", class {class}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Overloaded {}
