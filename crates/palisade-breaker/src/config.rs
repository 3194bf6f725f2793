//! Validated breaker configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, DefaultClock};
use crate::error::ConfigError;
use crate::state::Transition;

/// The largest count-based window, and the largest number of buckets.
///
/// Bounded so a typo cannot allocate gigabytes.
pub const MAX_WINDOW_SIZE: u32 = 1_000_000;

/// Which outcomes the failure and slow-call rates are computed over.
///
/// See `docs/circuit-breaker.md` ("Choosing the window").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `size` recorded outcomes (a ring: each new outcome evicts the
    /// oldest one).
    Count {
        /// Number of outcomes kept.
        size: u32,
    },
    /// The outcomes of the last `duration`, kept in `buckets` buckets of
    /// `duration / buckets` each; a whole bucket expires at once.
    Time {
        /// Length of the window.
        duration: Duration,
        /// Number of buckets the window is split into.
        buckets: u32,
    },
}

/// What makes a closed breaker open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureMode {
    /// Open when `failures / calls >= threshold` over the window, once the
    /// window holds at least `minimum_calls` outcomes.
    Rate {
        /// The failure rate, in `(0, 1]`, at or above which the breaker opens.
        threshold: f64,
    },
    /// Open after this many failures in a row, with no success between them.
    Consecutive {
        /// Number of consecutive failures that opens the breaker (at least 1).
        failures: u32,
    },
}

/// A callback run after every state transition.
pub type OnTransition = Arc<dyn Fn(&Transition) + Send + Sync>;

/// A validated circuit breaker configuration; build one with
/// [`Config::builder`].
///
/// `Config::default()` holds the defaults listed on [`ConfigBuilder`].
#[derive(Clone)]
pub struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) window: SlidingWindow,
    pub(crate) failure_mode: FailureMode,
    pub(crate) minimum_calls: u32,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) wait_duration: Duration,
    pub(crate) wait_multiplier: f64,
    pub(crate) max_wait_duration: Duration,
    pub(crate) wait_jitter: f64,
    pub(crate) half_open_probes: u32,
    pub(crate) max_half_open_duration: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) on_transition: Option<OnTransition>,
    pub(crate) seed: Option<u64>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_mode", &self.failure_mode)
            .field("minimum_calls", &self.minimum_calls)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("wait_duration", &self.wait_duration)
            .field("wait_multiplier", &self.wait_multiplier)
            .field("max_wait_duration", &self.max_wait_duration)
            .field("wait_jitter", &self.wait_jitter)
            .field("half_open_probes", &self.half_open_probes)
            .field("max_half_open_duration", &self.max_half_open_duration)
            .field("clock", &self.clock)
            .field("on_transition", &self.on_transition.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        ConfigBuilder::default()
            .build()
            .expect("the default configuration is valid")
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The name used in metrics labels and tracing events.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same configuration under another name (keyed breakers use it to
    /// name one breaker per key).
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The sliding window.
    pub fn window(&self) -> SlidingWindow {
        self.window
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// The base wait in the open state.
    pub fn wait_duration(&self) -> Duration {
        self.wait_duration
    }

    /// The number of concurrent half-open probes.
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }

    /// Whether `other` has the same parameters: name, window, failure mode,
    /// thresholds, waits, probes and jitter seed. The clock and the
    /// transition callback are not compared (they cannot be). A hot reload
    /// (palisade-reload's `Carry`) keeps a breaker, and its state, while this
    /// holds for its new configuration.
    pub fn same_parameters(&self, other: &Config) -> bool {
        self.name == other.name
            && self.window == other.window
            && self.failure_mode == other.failure_mode
            && self.minimum_calls == other.minimum_calls
            && self.slow_call_duration == other.slow_call_duration
            && self.slow_call_rate_threshold == other.slow_call_rate_threshold
            && self.wait_duration == other.wait_duration
            && self.wait_multiplier == other.wait_multiplier
            && self.max_wait_duration == other.max_wait_duration
            && self.wait_jitter == other.wait_jitter
            && self.half_open_probes == other.half_open_probes
            && self.max_half_open_duration == other.max_half_open_duration
            && self.seed == other.seed
    }

    /// Minimum calls before the rates count, capped at the size of a
    /// count-based window (a window of 10 can never hold 100 calls).
    pub(crate) fn effective_minimum_calls(&self) -> u64 {
        match self.window {
            SlidingWindow::Count { size } => u64::from(self.minimum_calls.min(size)),
            SlidingWindow::Time { .. } => u64::from(self.minimum_calls),
        }
    }
}

/// Builds a [`Config`]; [`build`](ConfigBuilder::build) validates it and names
/// the offending field on error.
///
/// | knob | default |
/// |---|---|
/// | [`name`](Self::name) | `"default"` |
/// | [`sliding_window`](Self::sliding_window) | count-based, 100 calls |
/// | [`failure_rate_threshold`](Self::failure_rate_threshold) | 0.5 |
/// | [`consecutive_failures`](Self::consecutive_failures) | off (rate mode) |
/// | [`minimum_calls`](Self::minimum_calls) | 20 |
/// | [`slow_call_duration`](Self::slow_call_duration) | off |
/// | [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) | 1.0 |
/// | [`wait_duration`](Self::wait_duration) | 5 s |
/// | [`wait_multiplier`](Self::wait_multiplier) | 2.0 |
/// | [`max_wait_duration`](Self::max_wait_duration) | 60 s |
/// | [`wait_jitter`](Self::wait_jitter) | 0.1 |
/// | [`half_open_probes`](Self::half_open_probes) | 5 |
/// | [`max_half_open_duration`](Self::max_half_open_duration) | 30 s |
/// | [`clock`](Self::clock) | [`DefaultClock`] (tokio time in a paused runtime, else a fast clock) |
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConfigBuilder {
    name: Arc<str>,
    window: SlidingWindow,
    failure_rate_threshold: f64,
    consecutive_failures: Option<u32>,
    minimum_calls: u32,
    slow_call_duration: Option<Duration>,
    slow_call_rate_threshold: f64,
    wait_duration: Duration,
    wait_multiplier: f64,
    max_wait_duration: Duration,
    wait_jitter: f64,
    half_open_probes: u32,
    max_half_open_duration: Duration,
    clock: Option<Arc<dyn Clock>>,
    on_transition: Option<OnTransition>,
    seed: Option<u64>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("minimum_calls", &self.minimum_calls)
            .finish_non_exhaustive()
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            window: SlidingWindow::Count { size: 100 },
            failure_rate_threshold: 0.5,
            consecutive_failures: None,
            minimum_calls: 20,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            wait_duration: Duration::from_secs(5),
            wait_multiplier: 2.0,
            max_wait_duration: Duration::from_secs(60),
            wait_jitter: 0.1,
            half_open_probes: 5,
            max_half_open_duration: Duration::from_secs(30),
            clock: None,
            on_transition: None,
            seed: None,
        }
    }
}

fn err(field: &'static str, reason: impl Into<String>) -> ConfigError {
    crate::error::config_error(field, reason)
}

fn check_rate(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(err(field, format!("must be in (0, 1], got {value}")))
    }
}

impl ConfigBuilder {
    /// Name used in metrics labels and tracing events. Default `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The sliding window the rates are computed over. Default: the last
    /// 100 calls.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// Shorthand for a count-based window of the last `size` calls.
    pub fn count_window(self, size: u32) -> Self {
        self.sliding_window(SlidingWindow::Count { size })
    }

    /// Shorthand for a time-based window of `duration` in `buckets` buckets.
    pub fn time_window(self, duration: Duration, buckets: u32) -> Self {
        self.sliding_window(SlidingWindow::Time { duration, buckets })
    }

    /// Failure rate in `(0, 1]` at or above which the breaker opens. Default
    /// 0.5. Also the rate among half-open probes that re-opens it.
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate;
        self
    }

    /// Switch to consecutive-failures mode: open after `failures` failures in
    /// a row. The failure rate is then not used; the slow-call rate still is.
    /// In this mode a single failed half-open probe re-opens the breaker.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// Number of outcomes the window must hold before the rates count.
    /// Evaluated on every outcome, so the breaker can open on the call that
    /// reaches the minimum. Capped at the size of a count-based window.
    /// Default 20.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Calls lasting at least this long count as slow (whatever their
    /// outcome). Off by default: the closed state then never reads the clock.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// Slow-call rate in `(0, 1]` at or above which the breaker opens.
    /// Default 1.0 (every call in the window slow). Only used with
    /// [`slow_call_duration`](Self::slow_call_duration).
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_call_rate_threshold = rate;
        self
    }

    /// Wait in the open state before the first probe. Default 5 s.
    pub fn wait_duration(mut self, duration: Duration) -> Self {
        self.wait_duration = duration;
        self
    }

    /// Growth of the wait on each re-opening without a clean close in
    /// between: the n-th consecutive opening waits
    /// `wait_duration * wait_multiplier^(n-1)`, capped at
    /// [`max_wait_duration`](Self::max_wait_duration). At least 1.0 (1.0 keeps
    /// the wait constant). Default 2.0.
    pub fn wait_multiplier(mut self, multiplier: f64) -> Self {
        self.wait_multiplier = multiplier;
        self
    }

    /// Cap of the growing wait. Must be at least `wait_duration`. Default 60 s.
    pub fn max_wait_duration(mut self, duration: Duration) -> Self {
        self.max_wait_duration = duration;
        self
    }

    /// Fraction in `[0, 1)` by which each wait is randomly shortened, so a
    /// fleet of instances does not probe a recovering upstream in lockstep.
    /// Never lengthens the wait past the cap. Default 0.1.
    pub fn wait_jitter(mut self, jitter: f64) -> Self {
        self.wait_jitter = jitter;
        self
    }

    /// Number of calls admitted concurrently in the half-open state (and the
    /// number of probe outcomes the decision is made over). Default 5.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// Longest time the breaker stays half-open. If the probes have not
    /// decided by then (a probe hung), the next call re-opens the breaker
    /// (and the wait grows), so a stuck probe can never keep it half-open.
    /// Default 30 s.
    pub fn max_half_open_duration(mut self, duration: Duration) -> Self {
        self.max_half_open_duration = duration;
        self
    }

    /// The clock. Default [`DefaultClock`]: tokio time when built in a paused
    /// runtime, else a fast monotonic clock; [`TokioClock`](crate::TokioClock)
    /// always follows tokio.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Called after every state transition, outside the breaker's lock (so it
    /// may use the breaker's handle). Keep it short: it runs on the caller's
    /// task.
    pub fn on_transition(mut self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(f));
        self
    }

    /// Seed of the jitter's random numbers, for reproducible tests. By
    /// default every breaker draws its own random seed, so instances of a
    /// fleet do not jitter alike.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field: a rate outside
    /// `(0, 1]`, an empty or oversized window, zero minimum calls or probes, a
    /// zero wait, a multiplier below 1, a cap below the wait, a jitter outside
    /// `[0, 1)`.
    pub fn build(self) -> Result<Config, ConfigError> {
        match self.window {
            SlidingWindow::Count { size } => {
                if size == 0 {
                    return Err(err("sliding_window.size", "must be at least 1"));
                }
                if size > MAX_WINDOW_SIZE {
                    return Err(err(
                        "sliding_window.size",
                        format!("must be at most {MAX_WINDOW_SIZE}, got {size}"),
                    ));
                }
            }
            SlidingWindow::Time { duration, buckets } => {
                if buckets == 0 {
                    return Err(err("sliding_window.buckets", "must be at least 1"));
                }
                if buckets > MAX_WINDOW_SIZE {
                    return Err(err(
                        "sliding_window.buckets",
                        format!("must be at most {MAX_WINDOW_SIZE}, got {buckets}"),
                    ));
                }
                if duration.is_zero() {
                    return Err(err("sliding_window.duration", "must not be zero"));
                }
                if duration.as_nanos() < u128::from(buckets) {
                    return Err(err(
                        "sliding_window.duration",
                        "must be at least one nanosecond per bucket",
                    ));
                }
            }
        }
        check_rate("failure_rate_threshold", self.failure_rate_threshold)?;
        if self.consecutive_failures == Some(0) {
            return Err(err("consecutive_failures", "must be at least 1"));
        }
        if self.minimum_calls == 0 {
            return Err(err("minimum_calls", "must be at least 1"));
        }
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(err("slow_call_duration", "must not be zero"));
        }
        check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.wait_duration.is_zero() {
            return Err(err("wait_duration", "must not be zero"));
        }
        if !(self.wait_multiplier >= 1.0 && self.wait_multiplier.is_finite()) {
            return Err(err(
                "wait_multiplier",
                format!("must be a finite number >= 1, got {}", self.wait_multiplier),
            ));
        }
        if self.max_wait_duration < self.wait_duration {
            return Err(err("max_wait_duration", "must be at least wait_duration"));
        }
        if !(0.0..1.0).contains(&self.wait_jitter) {
            return Err(err(
                "wait_jitter",
                format!("must be in [0, 1), got {}", self.wait_jitter),
            ));
        }
        if self.half_open_probes == 0 {
            return Err(err("half_open_probes", "must be at least 1"));
        }
        if self.half_open_probes > 65_535 {
            return Err(err("half_open_probes", "must be at most 65535"));
        }
        if self.max_half_open_duration.is_zero() {
            return Err(err("max_half_open_duration", "must not be zero"));
        }
        // Durations are kept as u64 nanoseconds (584 years); refuse the rest.
        for (field, d) in [
            ("wait_duration", self.wait_duration),
            ("max_wait_duration", self.max_wait_duration),
            ("max_half_open_duration", self.max_half_open_duration),
        ] {
            if d.as_nanos() > u128::from(u64::MAX / 4) {
                return Err(err(field, "is too long"));
            }
        }
        let failure_mode = match self.consecutive_failures {
            Some(failures) => FailureMode::Consecutive { failures },
            None => FailureMode::Rate {
                threshold: self.failure_rate_threshold,
            },
        };
        Ok(Config {
            name: self.name,
            window: self.window,
            failure_mode,
            minimum_calls: self.minimum_calls,
            slow_call_duration: self.slow_call_duration,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            wait_duration: self.wait_duration,
            wait_multiplier: self.wait_multiplier,
            max_wait_duration: self.max_wait_duration,
            wait_jitter: self.wait_jitter,
            half_open_probes: self.half_open_probes,
            max_half_open_duration: self.max_half_open_duration,
            clock: self.clock.unwrap_or_else(|| Arc::new(DefaultClock::new())),
            on_transition: self.on_transition,
            seed: self.seed,
        })
    }
}
