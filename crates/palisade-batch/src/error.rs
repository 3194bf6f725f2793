//! Error types.

use std::fmt;
use std::sync::Arc;

/// Why a call through a [`Batch`](crate::Batch) failed.
///
/// The service's error type is [`tower::BoxError`]; downcast to this type to
/// tell the cases apart. It is `Clone` (the causes sit behind an `Arc`)
/// because one failure is handed to every caller of the batch it hit.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The inner service failed the whole batch this item was part of.
    /// [`std::error::Error::source`] is the inner service's error.
    Failed(SharedError),
    /// The inner service panicked while handling this item's batch (in `call`
    /// or while its future ran). The batcher keeps serving.
    Panicked(Arc<str>),
    /// The inner service answered a batch of `sent` requests with `received`
    /// results, so no result can be matched to its caller.
    LengthMismatch {
        /// Requests in the batch.
        sent: usize,
        /// Results the inner service returned.
        received: usize,
    },
    /// The batcher no longer takes items; see [`Closed`] for why.
    Closed(Closed),
    /// The drain deadline passed before this item's batch finished; the item
    /// was answered with this error instead of being dropped.
    Cut,
}

/// Why a batcher stopped taking items.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Closed {
    /// It was closed through its [`BatchHandle`](crate::BatchHandle) (or
    /// its drain phase), or every service handle was dropped.
    Shutdown,
    /// The inner service's `poll_ready` failed: tower's signal that the
    /// service is dead. The source is that error.
    InnerFailed(SharedError),
    /// The inner service panicked in `poll_ready`.
    InnerPanicked(Arc<str>),
    /// The worker task ended without answering (its runtime shut down or it
    /// was aborted).
    WorkerGone,
}

pub use palisade_core::SharedError;

// === impl Error ===

impl Error {
    /// Whether this failure means the batcher is closed (a retry through the
    /// same batcher fails too).
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_) | Error::Cut)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Failed(e) => write!(f, "batch failed: {e}"),
            Error::Panicked(msg) => write!(f, "the batch's inner service panicked: {msg}"),
            Error::LengthMismatch { sent, received } => write!(
                f,
                "the inner service answered a batch of {sent} request(s) with {received} result(s)"
            ),
            Error::Closed(why) => write!(f, "batcher closed: {why}"),
            Error::Cut => f.write_str("batch cut at the drain deadline"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Failed(e) | Error::Closed(Closed::InnerFailed(e)) => Some(e.inner()),
            _ => None,
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Shutdown => f.write_str("shut down"),
            Closed::InnerFailed(e) => write!(f, "the inner service failed: {e}"),
            Closed::InnerPanicked(msg) => write!(f, "the inner service panicked: {msg}"),
            Closed::WorkerGone => f.write_str("the worker task ended"),
        }
    }
}

/// An invalid configuration value, naming the field (the one type every
/// palisade builder returns).
pub use palisade_core::ConfigError;

/// A [`ConfigError`] of this crate's configuration.
pub(crate) fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new("batch", field, reason)
}

pub(crate) use palisade_core::panic_message;
