//! The default clock of palisade's policies (the breaker, the rate limiter).
//!
//! **The rule:** a policy built inside a tokio runtime whose clock is
//! paused (`#[tokio::test(start_paused = true)]`, `tokio::time::pause()`)
//! reads tokio's clock, so `tokio::time::advance` moves every policy of the
//! stack together; anywhere else it reads a fast monotonic clock (the CPU's
//! time-stamp counter through `quanta`, a few nanoseconds per read, falling
//! back to the OS monotonic clock). The choice is made once, when the clock
//! is created (when the policy is built), and never changes afterwards.
//!
//! Outside a paused runtime both sources are the same monotonic time, so
//! the rule only decides what a paused test sees.

use std::fmt;

/// Whether the current thread is inside a tokio runtime whose clock is
/// paused.
///
/// Without a runtime, or with tokio built without its `test-util` feature,
/// this is `false`.
pub fn tokio_time_is_paused() -> bool {
    // A paused clock does not move while no one advances it; a running one
    // follows the OS monotonic clock. So: read tokio's time, wait until the
    // OS clock has moved, read again. Called only when a clock is created.
    let before = tokio::time::Instant::now();
    #[allow(
        clippy::disallowed_methods,
        reason = "detects a paused tokio clock by comparing with the OS clock"
    )]
    let os = std::time::Instant::now();
    #[allow(clippy::disallowed_methods, reason = "see above")]
    while std::time::Instant::now() == os {
        std::hint::spin_loop();
    }
    tokio::time::Instant::now() == before
}

/// A monotonic clock following [the rule](self): tokio's when created in a
/// paused runtime, else the fast clock. Reads nanoseconds since creation.
#[derive(Clone)]
pub struct AutoClock {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Fast { clock: quanta::Clock, origin: u64 },
    Tokio { origin: tokio::time::Instant },
}

impl AutoClock {
    /// A clock chosen by [the rule](self), whose origin is now.
    pub fn new() -> Self {
        if tokio_time_is_paused() {
            Self::tokio()
        } else {
            Self::fast()
        }
    }

    /// The fast clock, whatever the runtime.
    pub fn fast() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self {
            source: Source::Fast { clock, origin },
        }
    }

    /// Tokio's clock, whatever the runtime (paused and advanced by tokio's
    /// test utilities).
    pub fn tokio() -> Self {
        Self {
            source: Source::Tokio {
                origin: tokio::time::Instant::now(),
            },
        }
    }

    /// Whether this clock reads tokio's time.
    pub fn is_tokio(&self) -> bool {
        matches!(self.source, Source::Tokio { .. })
    }

    /// Nanoseconds since the clock was created (saturating at `u64::MAX`,
    /// 584 years).
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        match &self.source {
            Source::Fast { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Source::Tokio { origin } => {
                let d = tokio::time::Instant::now().saturating_duration_since(*origin);
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
            }
        }
    }
}

impl Default for AutoClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AutoClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_tokio() { "tokio" } else { "fast" };
        f.debug_tuple("AutoClock").field(&kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_runtime_gets_tokio_time() {
        assert!(tokio_time_is_paused());
        let clock = AutoClock::new();
        assert!(clock.is_tokio());
        assert_eq!(clock.now_nanos(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_nanos(), 1_500_000_000);
    }

    #[tokio::test]
    async fn a_running_runtime_gets_the_fast_clock() {
        assert!(!tokio_time_is_paused());
        assert!(!AutoClock::new().is_tokio());
    }

    #[test]
    fn no_runtime_gets_the_fast_clock() {
        assert!(!tokio_time_is_paused());
        let clock = AutoClock::new();
        assert!(!clock.is_tokio());
        let a = clock.now_nanos();
        assert!(clock.now_nanos() >= a);
    }
}
