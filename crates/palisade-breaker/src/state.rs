//! States, transitions and their reasons.

use std::fmt;
use std::time::Duration;

use crate::counts::WindowCounts;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and their outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait has elapsed.
    Open,
    /// A bounded number of probe calls pass; their outcomes decide between
    /// closing and re-opening.
    HalfOpen,
    /// Every call is rejected until the handle changes the state.
    ForcedOpen,
    /// Every call passes and nothing is recorded.
    Disabled,
    /// Every call passes, outcomes are recorded (rates and metrics stay
    /// live) but the breaker never opens.
    MetricsOnly,
}

impl State {
    pub(crate) const fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
            State::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_code(code: u64) -> State {
        match code {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::MetricsOnly,
        }
    }

    /// The value of the `palisade_breaker_state` gauge for this state:
    /// closed 0, open 1, half-open 2, forced open 3, disabled 4, metrics
    /// only 5.
    pub const fn gauge_value(self) -> f64 {
        self.code() as f64
    }

    /// A stable lower-case name (`"closed"`, `"open"`, `"half_open"`,
    /// `"forced_open"`, `"disabled"`, `"metrics_only"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The failure rate reached its threshold (closed, once the minimum
    /// number of calls was recorded).
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// The configured number of consecutive failures was reached.
    ConsecutiveFailures,
    /// The open wait elapsed; the breaker now admits probes.
    WaitElapsed,
    /// Enough probes succeeded.
    ProbesSucceeded,
    /// Probe failures (or slow probes) reached the threshold.
    ProbesFailed,
    /// The probes did not decide within the half-open time limit.
    HalfOpenTimeout,
    /// The handle forced this state.
    Manual,
}

impl Reason {
    /// A stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::WaitElapsed => "wait_elapsed",
            Reason::ProbesSucceeded => "probes_succeeded",
            Reason::ProbesFailed => "probes_failed",
            Reason::HalfOpenTimeout => "half_open_timeout",
            Reason::Manual => "manual",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, passed to the `on_transition` callback and logged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's name.
    pub name: std::sync::Arc<str>,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// The counts that triggered it: the window when a closed breaker opens,
    /// the probe tally when a half-open breaker decides, `None` otherwise.
    pub counts: Option<WindowCounts>,
    /// When the breaker opened: how long until it admits probes.
    pub wait: Option<Duration>,
}
