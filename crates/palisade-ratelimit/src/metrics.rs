//! Metric names and the handles limiters hold.
//!
//! Handles are registered once, when a limiter is built, so the hot path is a
//! single increment: install your `metrics` recorder before building limiters.

use metrics::{Counter, Gauge};

/// Counter: requests a policy admitted. Label `policy`.
pub const ADMITTED: &str = "palisade_ratelimit_admitted_total";
/// Counter: requests a policy rejected. Label `policy`.
pub const LIMITED: &str = "palisade_ratelimit_limited_total";
/// Counter: requests a shadow policy would have rejected (and admitted). Label `policy`.
pub const SHADOW_LIMITED: &str = "palisade_ratelimit_shadow_limited_total";
/// Gauge: keys a keyed policy currently tracks. Label `policy`.
pub const KEYS: &str = "palisade_ratelimit_keys";
/// Counter: keys evicted to keep a keyed policy under its cap. Label `policy`.
pub const EVICTED: &str = "palisade_ratelimit_evicted_total";
/// Counter: requests a keyed policy found no key in (refused, or admitted
/// unlimited with `allow_missing`). Label `policy`.
pub const MISSING_KEY: &str = "palisade_ratelimit_missing_key_total";
/// Counter: checks the Redis backend could not complete in its budget (error,
/// timeout or disconnected). Labels `policy` and `fail` (`open` or `closed`).
pub const BACKEND_ERRORS: &str = "palisade_ratelimit_backend_errors_total";

#[derive(Clone, Debug)]
pub(crate) struct Counters {
    pub(crate) admitted: Counter,
    pub(crate) limited: Counter,
    pub(crate) shadow_limited: Counter,
}

impl Counters {
    pub(crate) fn new(policy: &'static str) -> Self {
        Self {
            admitted: metrics::counter!(ADMITTED, "policy" => policy),
            limited: metrics::counter!(LIMITED, "policy" => policy),
            shadow_limited: metrics::counter!(SHADOW_LIMITED, "policy" => policy),
        }
    }

    #[inline]
    pub(crate) fn record(&self, allowed: bool, shadow: bool) {
        if allowed {
            self.admitted.increment(1);
        } else if shadow {
            self.shadow_limited.increment(1);
        } else {
            self.limited.increment(1);
        }
    }
}

pub(crate) fn keys_gauge(policy: &'static str) -> Gauge {
    metrics::gauge!(KEYS, "policy" => policy)
}

pub(crate) fn evicted_counter(policy: &'static str) -> Counter {
    metrics::counter!(EVICTED, "policy" => policy)
}

pub(crate) fn missing_key_counter(policy: &'static str) -> Counter {
    metrics::counter!(MISSING_KEY, "policy" => policy)
}
