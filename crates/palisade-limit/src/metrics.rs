//! Metric names and the handles a limiter registers once (so recording is a
//! plain handle call, no registry lookup per call).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::error::Reason;

/// Gauge: the current limit. Label `limiter`.
pub const LIMIT: &str = "palisade_limit_limit";
/// Gauge: calls in flight, as of a recent completed call (every 8th, and
/// every drop). Label `limiter`.
pub const IN_FLIGHT: &str = "palisade_limit_in_flight";
/// Counter: calls refused. Labels `limiter`, `class` (`""` without
/// classes), `reason` (`limit`, `queue_timeout`, `queue_shed`,
/// `class_share`, `deadline`).
pub const REJECTED: &str = "palisade_limit_rejected_total";
/// Histogram: the latency of the samples fed to the algorithm, in seconds:
/// every 8th success (a uniform subsample, at an eighth of the cost) and
/// every drop. Labels `limiter`, `outcome` (`success`, `drop`).
pub const RTT: &str = "palisade_limit_rtt_seconds";
/// Histogram: how long a call waited in the queue before its slot, in
/// seconds. Label `limiter`.
pub const QUEUE_DELAY: &str = "palisade_limit_queue_delay_seconds";
/// Gauge: calls waiting in the queue. Label `limiter`.
pub const QUEUED: &str = "palisade_limit_queued";

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) limit: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) queued: Gauge,
    pub(crate) rtt_success: Histogram,
    pub(crate) rtt_drop: Histogram,
    pub(crate) queue_delay: Histogram,
    /// Per class (one entry without classes), per [`Reason::ALL`].
    rejected: Box<[[Counter; 5]]>,
}

impl Metrics {
    pub(crate) fn new(name: &str, classes: &[&'static str]) -> Self {
        let name = name.to_owned();
        let rtt = |outcome: &'static str| histogram!(RTT, "limiter" => name.clone(), "outcome" => outcome);
        let classes: &[&'static str] = if classes.is_empty() { &[""] } else { classes };
        Self {
            limit: gauge!(LIMIT, "limiter" => name.clone()),
            in_flight: gauge!(IN_FLIGHT, "limiter" => name.clone()),
            queued: gauge!(QUEUED, "limiter" => name.clone()),
            rtt_success: rtt("success"),
            rtt_drop: rtt("drop"),
            queue_delay: histogram!(QUEUE_DELAY, "limiter" => name.clone()),
            rejected: classes
                .iter()
                .map(|&class| {
                    Reason::ALL.map(|reason| {
                        counter!(REJECTED, "limiter" => name.clone(), "class" => class, "reason" => reason.as_str())
                    })
                })
                .collect(),
        }
    }

    pub(crate) fn rejected(&self, class: usize, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejected[class.min(self.rejected.len() - 1)][i].increment(1);
    }
}
