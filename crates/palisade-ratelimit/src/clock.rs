//! Where limiters read the time from.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// A monotonic source of nanoseconds for limiters.
///
/// Three sources, chosen at construction; reading one is a single
/// well-predicted branch plus the source itself. The default
/// ([`Clock::default`], what limiters use unless given one) follows
/// palisade's one clock rule, shared with the circuit breaker: built inside a
/// tokio runtime whose clock is paused it is [`Clock::tokio`], so
/// `tokio::time::advance` moves the limiter and the breaker of one stack
/// together; anywhere else it is [`Clock::fast`].
///
/// - [`Clock::fast`]: the CPU's invariant time-stamp counter via
///   [`quanta`], calibrated once per process, falling back to the OS monotonic
///   clock where no usable TSC exists. About 10 to 18 ns a read on the project's
///   machine against 23 to 35 ns for `std::time::Instant::now()` (see the `clock`
///   group of the benchmark). This is the clock `governor` uses.
/// - [`Clock::tokio`]: `tokio::time::Instant`, so a test runtime with paused
///   time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`)
///   drives the limiter deterministically.
/// - [`Clock::manual`]: a value you set, for tests without a runtime (for
///   example many OS threads sharing one injected time).
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Fast { clock: quanta::Clock, origin: u64 },
    Tokio { origin: tokio::time::Instant },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The production clock (TSC through `quanta`).
    pub fn fast() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self {
            source: Source::Fast { clock, origin },
        }
    }

    /// A clock that follows `tokio::time`, including paused test time.
    ///
    /// Build it inside the runtime whose time should drive it.
    pub fn tokio() -> Self {
        Self {
            source: Source::Tokio {
                origin: tokio::time::Instant::now(),
            },
        }
    }

    /// A clock that only moves when its [`ManualClock`] handle says so.
    pub fn manual() -> (Self, ManualClock) {
        let now = Arc::new(AtomicU64::new(0));
        let clock = Self {
            source: Source::Manual(now.clone()),
        };
        (clock, ManualClock { now })
    }

    /// Nanoseconds since this clock was built.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        match &self.source {
            Source::Fast { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Source::Tokio { origin } => tokio::time::Instant::now()
                .saturating_duration_since(*origin)
                .as_nanos() as u64,
            Source::Manual(now) => now.load(Ordering::Acquire),
        }
    }
}

impl Default for Clock {
    /// [`Clock::tokio`] when built inside a tokio runtime whose clock is
    /// paused, else [`Clock::fast`] (decided once, here).
    fn default() -> Self {
        if palisade_core::clock::tokio_time_is_paused() {
            Self::tokio()
        } else {
            Self::fast()
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.source {
            Source::Fast { .. } => "fast",
            Source::Tokio { .. } => "tokio",
            Source::Manual(_) => "manual",
        };
        f.debug_tuple("Clock").field(&kind).finish()
    }
}

/// The handle that moves a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }

    /// Sets the clock to `nanos` since its origin.
    pub fn set_nanos(&self, nanos: u64) {
        self.now.store(nanos, Ordering::Release);
    }

    /// The current reading, in nanoseconds.
    pub fn nanos(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}
