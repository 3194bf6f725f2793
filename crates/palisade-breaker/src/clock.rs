//! Where the breaker reads time from.

use std::fmt;
use std::time::Duration;

/// A monotonic clock the breaker reads whenever it needs the time.
///
/// The breaker reads the clock only when it must: to time calls when
/// slow-call detection is on, to pick the bucket of a time-based window, and
/// to decide whether an open breaker may probe again. A closed breaker with a
/// count-based window and no slow-call threshold never reads it.
///
/// The default is [`TokioClock`], so `tokio::time::pause` and
/// `tokio::time::advance` drive every timer of the breaker in tests.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Time elapsed since an origin fixed for the life of the clock.
    ///
    /// Must never go backwards.
    fn now(&self) -> Duration;
}

/// The default [`Clock`]: [`tokio::time::Instant`], paused and advanced by
/// tokio's test utilities.
///
/// Outside a paused runtime this is the operating system's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}
