//! Metric handles, registered once per breaker so recording is a plain
//! counter increment (no registry lookup per call).

use metrics::{Counter, Gauge, counter, gauge};

use crate::state::State;

/// Gauge: the breaker's state, see [`State::gauge_value`]. Label `breaker`.
pub const STATE: &str = "palisade_breaker_state";
/// Counter: completed calls by outcome. Labels `breaker`, `outcome`
/// (`success`, `failure`, `ignored`, `cancelled`).
pub const CALLS: &str = "palisade_breaker_calls_total";
/// Counter: calls that took at least the slow-call duration. Label `breaker`.
pub const SLOW_CALLS: &str = "palisade_breaker_slow_calls_total";
/// Counter: calls rejected without reaching the inner service. Label
/// `breaker`.
pub const REJECTED: &str = "palisade_breaker_rejected_total";
/// Counter: state transitions. Labels `breaker`, `from`, `to`.
pub const TRANSITIONS: &str = "palisade_breaker_transitions_total";
/// Counter: idle closed per-key breakers evicted to make room for a new key
/// ([`KeyedBreakers`](crate::KeyedBreakers)). Label `breaker` (the
/// configuration's name).
pub const EVICTED: &str = "palisade_breaker_evicted_total";

#[derive(Debug)]
pub(crate) struct Metrics {
    name: String,
    state: Gauge,
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) ignored: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) slow: Counter,
    pub(crate) rejected: Counter,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let calls = |outcome: &'static str| counter!(CALLS, "breaker" => name.to_owned(), "outcome" => outcome);
        Self {
            name: name.to_owned(),
            state: gauge!(STATE, "breaker" => name.to_owned()),
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            cancelled: calls("cancelled"),
            slow: counter!(SLOW_CALLS, "breaker" => name.to_owned()),
            rejected: counter!(REJECTED, "breaker" => name.to_owned()),
        }
    }

    pub(crate) fn state(&self, state: State) {
        self.state.set(state.gauge_value());
    }

    pub(crate) fn transition(&self, from: State, to: State) {
        counter!(
            TRANSITIONS,
            "breaker" => self.name.clone(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
    }
}
