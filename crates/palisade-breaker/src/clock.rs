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
/// The default is [`DefaultClock`]: tokio's clock when the breaker is built
/// in a runtime whose clock is paused (so `tokio::time::pause` and
/// `tokio::time::advance` drive every timer of the breaker, and of a rate
/// limiter built next to it, in tests), else a fast monotonic clock.
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

/// The default [`Clock`], following palisade's one clock rule (shared with
/// the rate limiter): built inside a tokio runtime whose clock is paused, it
/// reads tokio's clock; anywhere else a fast monotonic clock. Decided once,
/// when the clock (the breaker's configuration) is built.
#[derive(Debug, Clone, Default)]
pub struct DefaultClock {
    clock: palisade_core::clock::AutoClock,
}

impl DefaultClock {
    /// A clock chosen by the rule, whose origin is now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this clock reads tokio's time (it was built in a paused
    /// runtime).
    pub fn is_tokio(&self) -> bool {
        self.clock.is_tokio()
    }
}

impl Clock for DefaultClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.now_nanos())
    }
}
