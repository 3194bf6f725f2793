//! Error types.

use std::fmt;
use std::sync::Arc;

/// Why a job sent through a [`Pool`](crate::Pool) or a
/// [`CpuPool`](crate::CpuPool) failed, when the pool itself (not the job's
/// inner service) is the reason.
///
/// The services' error type is [`tower::BoxError`]: an inner service's own
/// error reaches its caller unchanged, and these are the other cases;
/// downcast to tell them apart. It is `Clone` (causes sit behind an `Arc`)
/// because one close reason is handed to every caller it reaches.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The job panicked (the inner service's `call`, its future, or the CPU
    /// function). Only this caller sees it; the pool keeps serving.
    Panicked(Arc<str>),
    /// The pool no longer takes jobs; see [`Closed`] for why.
    Closed(Closed),
    /// The drain deadline passed before this job finished; it was answered
    /// with this error instead of being dropped.
    Cut,
    /// [`CpuPool::try_run`](crate::CpuPool::try_run): every thread is busy
    /// and the queue is full. Retry later, or shed the request.
    Overloaded,
}

/// Why a pool stopped taking jobs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Closed {
    /// It was closed through its [`PoolHandle`](crate::PoolHandle) (or its
    /// drain phase), or every service handle was dropped.
    Shutdown,
    /// The factory failed [`max_factory_failures`] times in a row, so no
    /// worker can be made. The source is the last factory error.
    ///
    /// [`max_factory_failures`]: crate::PoolBuilder::max_factory_failures
    FactoryFailed(SharedError),
    /// The worker tasks ended without answering (their runtime shut down or
    /// they were aborted).
    WorkerGone,
}

pub use palisade_core::SharedError;

// === impl Error ===

impl Error {
    /// Whether a retry through the same pool is bound to fail too.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_) | Error::Cut)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Panicked(msg) => write!(f, "the pooled job panicked: {msg}"),
            Error::Closed(why) => write!(f, "pool closed: {why}"),
            Error::Cut => f.write_str("job cut at the drain deadline"),
            Error::Overloaded => f.write_str("CPU pool overloaded: every thread busy, queue full"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Closed(Closed::FactoryFailed(e)) => Some(e.inner()),
            _ => None,
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Shutdown => f.write_str("shut down"),
            Closed::FactoryFailed(e) => {
                write!(f, "the worker factory keeps failing (last error: {e})")
            }
            Closed::WorkerGone => f.write_str("the worker tasks ended"),
        }
    }
}

/// An invalid configuration value, naming the field (the one type every
/// palisade builder returns).
pub use palisade_core::ConfigError;

/// A [`ConfigError`] of this crate's configuration.
pub(crate) fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new("pool", field, reason)
}

pub(crate) use palisade_core::panic_message;
