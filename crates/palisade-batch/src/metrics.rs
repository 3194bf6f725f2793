//! The batcher's metric handles, registered once per worker so the hot path
//! formats no labels.

use metrics::{Counter, Gauge, Histogram};

use crate::message::Reason;
use crate::metric_names as names;

pub(crate) struct Metrics {
    flushes: [Counter; Reason::ALL.len()],
    pub(crate) size: Histogram,
    pub(crate) items: Counter,
    pub(crate) deduplicated: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) discarded: Counter,
    pub(crate) failed_error: Counter,
    pub(crate) failed_panic: Counter,
    pub(crate) failed_length: Counter,
    pub(crate) bisections: Counter,
    pub(crate) cut: Counter,
    pub(crate) queued: Gauge,
    pub(crate) in_flight: Gauge,
}

impl Metrics {
    pub(crate) fn new(batcher: &str) -> Self {
        let b = batcher.to_owned();
        let failed = |kind: &'static str| metrics::counter!(names::FAILED, "batcher" => b.clone(), "kind" => kind);
        Self {
            flushes: Reason::ALL.map(|r| {
                metrics::counter!(names::FLUSHES, "batcher" => b.clone(), "reason" => r.as_str())
            }),
            size: metrics::histogram!(names::SIZE, "batcher" => b.clone()),
            items: metrics::counter!(names::ITEMS, "batcher" => b.clone()),
            deduplicated: metrics::counter!(names::DEDUPLICATED, "batcher" => b.clone()),
            cancelled: metrics::counter!(names::CANCELLED, "batcher" => b.clone()),
            discarded: metrics::counter!(names::DISCARDED, "batcher" => b.clone()),
            failed_error: failed("error"),
            failed_panic: failed("panic"),
            failed_length: failed("length_mismatch"),
            bisections: metrics::counter!(names::BISECTIONS, "batcher" => b.clone()),
            cut: metrics::counter!(names::CUT, "batcher" => b.clone()),
            queued: metrics::gauge!(names::QUEUED, "batcher" => b.clone()),
            in_flight: metrics::gauge!(names::IN_FLIGHT, "batcher" => b),
        }
    }

    pub(crate) fn flushed(&self, reason: Reason) {
        let i = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in Reason::ALL");
        self.flushes[i].increment(1);
    }
}
