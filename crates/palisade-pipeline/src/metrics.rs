//! Metric handles, registered once per stage (and per branch) with the
//! pipeline and stage names as labels, so the hot path formats no labels.

use metrics::{Counter, Gauge, Histogram};

use crate::metric_names as names;

pub(crate) struct StageMetrics {
    pub(crate) items_in: Counter,
    pub(crate) items_out: Counter,
    pub(crate) failed: Counter,
    pub(crate) panicked: Counter,
    pub(crate) cut: Counter,
    pub(crate) queue_depth: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) service_time: Histogram,
    pub(crate) busy: Gauge,
    pub(crate) bottleneck: Gauge,
}

impl StageMetrics {
    pub(crate) fn new(pipeline: &str, stage: &str) -> Self {
        let p = pipeline.to_owned();
        let s = stage.to_owned();
        let errors = |kind: &'static str| metrics::counter!(names::ERRORS, "pipeline" => p.clone(), "stage" => s.clone(), "kind" => kind);
        Self {
            items_in: metrics::counter!(names::ITEMS_IN, "pipeline" => p.clone(), "stage" => s.clone()),
            items_out: metrics::counter!(names::ITEMS_OUT, "pipeline" => p.clone(), "stage" => s.clone()),
            failed: errors("error"),
            panicked: errors("panic"),
            cut: metrics::counter!(names::CUT, "pipeline" => p.clone(), "stage" => s.clone()),
            queue_depth: metrics::gauge!(names::QUEUE_DEPTH, "pipeline" => p.clone(), "stage" => s.clone()),
            in_flight: metrics::gauge!(names::IN_FLIGHT, "pipeline" => p.clone(), "stage" => s.clone()),
            service_time: metrics::histogram!(names::SERVICE_SECONDS, "pipeline" => p.clone(), "stage" => s.clone()),
            busy: metrics::gauge!(names::BUSY_RATIO, "pipeline" => p.clone(), "stage" => s.clone()),
            bottleneck: metrics::gauge!(names::BOTTLENECK, "pipeline" => p, "stage" => s),
        }
    }
}

pub(crate) struct BranchMetrics {
    pub(crate) delivered: Counter,
    pub(crate) dropped: Counter,
    pub(crate) depth: Gauge,
}

impl BranchMetrics {
    pub(crate) fn new(pipeline: &str, branch: &str, policy: &'static str) -> Self {
        let p = pipeline.to_owned();
        let b = branch.to_owned();
        Self {
            delivered: metrics::counter!(names::BRANCH_DELIVERED, "pipeline" => p.clone(), "branch" => b.clone()),
            dropped: metrics::counter!(names::BRANCH_DROPPED, "pipeline" => p.clone(), "branch" => b.clone(), "policy" => policy),
            depth: metrics::gauge!(names::BRANCH_DEPTH, "pipeline" => p, "branch" => b),
        }
    }
}
