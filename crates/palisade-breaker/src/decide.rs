//! The breaker's decision maths, as pure functions: whether a closed
//! window's totals open the breaker, how a half-open round ends, how long an
//! opening waits. No atomics, no locks, no clock: the state machine in
//! `breaker.rs` feeds them numbers and acts on the answer, and the tests
//! below need no threads and no runtime.

use std::time::Duration;

use crate::config::{Config, FailureMode};
use crate::counts::WindowCounts;
use crate::state::{Reason, State};

/// Whether a closed window's totals open the breaker: only once it holds
/// `minimum_calls` outcomes, then at `failures >= threshold × calls` (when a
/// failure-rate threshold applies) or `slow_calls >= slow_threshold × calls`
/// (when slow-call detection is on). The failure rate is checked first.
pub(crate) fn rate_reason(
    c: WindowCounts,
    minimum_calls: u64,
    failure_threshold: Option<f64>,
    slow_threshold: Option<f64>,
) -> Option<Reason> {
    if c.calls < minimum_calls {
        return None;
    }
    let calls = c.calls as f64;
    if failure_threshold.is_some_and(|t| c.failures as f64 >= t * calls) {
        return Some(Reason::FailureRate);
    }
    if slow_threshold.is_some_and(|t| c.slow_calls as f64 >= t * calls) {
        return Some(Reason::SlowCallRate);
    }
    None
}

/// Decides a half-open round of `probes` probes as soon as its result is
/// certain: re-open once the failures (or slow probes) among them reach the
/// threshold; close once they cannot reach it even if every remaining probe
/// fails; `None` while undecided. In consecutive-failures mode one failed
/// probe re-opens.
pub(crate) fn probe_decision(
    t: WindowCounts,
    probes: u32,
    mode: FailureMode,
    slow_threshold: Option<f64>,
) -> Option<(State, Reason)> {
    let n = u64::from(probes);
    let remaining = n.saturating_sub(t.calls);
    let slow_limit = slow_threshold.map(|rate| rate * n as f64);
    let (fails_open, fails_may_open) = match mode {
        FailureMode::Consecutive { .. } => (t.failures >= 1, t.failures + remaining >= 1),
        FailureMode::Rate { threshold } => {
            let limit = threshold * n as f64;
            (
                t.failures as f64 >= limit,
                (t.failures + remaining) as f64 >= limit,
            )
        }
    };
    let slow_open = slow_limit.is_some_and(|l| t.slow_calls as f64 >= l);
    let slow_may_open = slow_limit.is_some_and(|l| (t.slow_calls + remaining) as f64 >= l);
    if fails_open || slow_open {
        Some((State::Open, Reason::ProbesFailed))
    } else if !fails_may_open && !slow_may_open {
        Some((State::Closed, Reason::ProbesSucceeded))
    } else {
        None
    }
}

/// The wait of the `openings`-th opening since the last clean close:
/// `wait_duration × wait_multiplier^(openings − 1)`, capped at
/// `max_wait_duration`, then shortened by `wait_jitter × unit` (`unit` a
/// uniform draw in `[0, 1)`), so jitter never lengthens it past the cap.
pub(crate) fn backoff(c: &Config, openings: u32, unit: f64) -> Duration {
    let exponent = openings.saturating_sub(1).min(1024) as i32;
    let grown = c.wait_duration.as_secs_f64() * c.wait_multiplier.powi(exponent);
    let base = if grown >= c.max_wait_duration.as_secs_f64() {
        c.max_wait_duration
    } else {
        Duration::from_secs_f64(grown)
    };
    if c.wait_jitter == 0.0 {
        return base;
    }
    base.mul_f64(1.0 - c.wait_jitter * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(calls: u64, failures: u64, slow_calls: u64) -> WindowCounts {
        WindowCounts {
            calls,
            failures,
            slow_calls,
        }
    }

    #[test]
    fn a_window_opens_only_from_its_minimum_and_at_the_threshold() {
        let rate = Some(0.5);
        assert_eq!(rate_reason(counts(3, 3, 0), 4, rate, None), None);
        assert_eq!(
            rate_reason(counts(4, 2, 0), 4, rate, None),
            Some(Reason::FailureRate)
        );
        assert_eq!(rate_reason(counts(4, 1, 0), 4, rate, None), None);
        // Consecutive mode passes no failure threshold: only slow calls.
        assert_eq!(rate_reason(counts(4, 4, 0), 4, None, None), None);
        assert_eq!(
            rate_reason(counts(4, 0, 4), 4, None, Some(1.0)),
            Some(Reason::SlowCallRate)
        );
        // Both crossed: the failure rate is reported.
        assert_eq!(
            rate_reason(counts(4, 4, 4), 4, rate, Some(0.5)),
            Some(Reason::FailureRate)
        );
    }

    #[test]
    fn a_half_open_round_decides_as_soon_as_it_is_certain() {
        let rate = FailureMode::Rate { threshold: 0.5 };
        // 5 probes at 50%: 3 failures re-open, 3 successes close.
        assert_eq!(probe_decision(counts(2, 0, 0), 5, rate, None), None);
        assert_eq!(
            probe_decision(counts(3, 0, 0), 5, rate, None),
            Some((State::Closed, Reason::ProbesSucceeded))
        );
        assert_eq!(probe_decision(counts(4, 2, 0), 5, rate, None), None);
        assert_eq!(
            probe_decision(counts(3, 3, 0), 5, rate, None),
            Some((State::Open, Reason::ProbesFailed))
        );
        // Consecutive mode: one failure re-opens, n successes close.
        let run = FailureMode::Consecutive { failures: 3 };
        assert_eq!(
            probe_decision(counts(1, 1, 0), 2, run, None),
            Some((State::Open, Reason::ProbesFailed))
        );
        assert_eq!(probe_decision(counts(1, 0, 0), 2, run, None), None);
        assert_eq!(
            probe_decision(counts(2, 0, 0), 2, run, None),
            Some((State::Closed, Reason::ProbesSucceeded))
        );
        // Slow probes re-open too.
        assert_eq!(
            probe_decision(counts(1, 0, 1), 1, rate, Some(1.0)),
            Some((State::Open, Reason::ProbesFailed))
        );
    }

    #[test]
    fn the_wait_grows_caps_and_is_only_ever_shortened_by_jitter() {
        let c = Config::builder()
            .wait_duration(Duration::from_secs(1))
            .wait_multiplier(2.0)
            .max_wait_duration(Duration::from_secs(5))
            .wait_jitter(0.5)
            .build()
            .unwrap();
        let secs = |openings, unit| backoff(&c, openings, unit).as_secs_f64();
        assert_eq!(secs(1, 0.0), 1.0);
        assert_eq!(secs(2, 0.0), 2.0);
        assert_eq!(secs(3, 0.0), 4.0);
        assert_eq!(secs(4, 0.0), 5.0, "capped");
        assert_eq!(secs(1_000, 0.0), 5.0, "no overflow");
        assert_eq!(secs(4, 0.5), 3.75, "jitter shortens");
        assert!(secs(4, 0.999_999) > 2.5);
    }
}
