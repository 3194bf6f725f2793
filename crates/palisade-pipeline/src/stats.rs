//! The counters a stage's worker updates and everyone else reads, their
//! snapshot ([`StageStats`]) and the bottleneck rule.
//!
//! Invariant of the counters (all only grow, except the two current
//! levels): an item counted in `received` of stage k was counted in `out`
//! of stage k-1 (or `admitted` of the feeder) first, so
//! `upstream_out - received` is the number of items in the queue in front of
//! stage k. After a drain, for every stage, `received == out + cut`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::StageMetrics;

pub(crate) struct StageShared {
    pub(crate) name: Arc<str>,
    pub(crate) concurrency: usize,
    pub(crate) window: usize,
    pub(crate) queue_capacity: usize,
    /// `out` of the stage before (the feeder's `admitted` for the first).
    pub(crate) upstream_out: Arc<AtomicU64>,
    pub(crate) received: AtomicU64,
    pub(crate) out: Arc<AtomicU64>,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cut: AtomicU64,
    pub(crate) busy_nanos: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) peak_in_flight: AtomicUsize,
    pub(crate) held: AtomicUsize,
    pub(crate) peak_held: AtomicUsize,
    pub(crate) started: Instant,
    pub(crate) metrics: StageMetrics,
}

impl StageShared {
    pub(crate) fn new(
        pipeline: &str,
        name: Arc<str>,
        concurrency: usize,
        window: usize,
        queue_capacity: usize,
        upstream_out: Arc<AtomicU64>,
    ) -> Self {
        let metrics = StageMetrics::new(pipeline, &name);
        Self {
            name,
            concurrency,
            window,
            queue_capacity,
            upstream_out,
            received: AtomicU64::new(0),
            out: Arc::new(AtomicU64::new(0)),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            peak_held: AtomicUsize::new(0),
            started: Instant::now(),
            metrics,
        }
    }

    /// Only the stage's own worker writes the levels and peaks, so a load
    /// and a store are enough.
    pub(crate) fn note_peaks(&self, in_flight: usize, held: usize) {
        if in_flight > self.peak_in_flight.load(Ordering::Relaxed) {
            self.peak_in_flight.store(in_flight, Ordering::Relaxed);
        }
        if held > self.peak_held.load(Ordering::Relaxed) {
            self.peak_held.store(held, Ordering::Relaxed);
        }
    }

    /// Publishes the current levels; the worker calls it before it sleeps.
    pub(crate) fn set_levels(&self, in_flight: usize, held: usize) {
        self.note_peaks(in_flight, held);
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.held.store(held, Ordering::Relaxed);
        self.metrics.in_flight.set(in_flight as f64);
        self.metrics.queue_depth.set(self.queue_depth() as f64);
    }

    fn queue_depth(&self) -> u64 {
        let received = self.received.load(Ordering::Acquire);
        self.upstream_out
            .load(Ordering::Acquire)
            .saturating_sub(received)
    }

    pub(crate) fn snapshot(&self) -> StageStats {
        let busy = Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed));
        let elapsed = self.started.elapsed();
        let capacity = elapsed.as_secs_f64() * self.concurrency as f64;
        let busy_fraction = if capacity > 0.0 {
            (busy.as_secs_f64() / capacity).min(1.0)
        } else {
            0.0
        };
        self.metrics.busy.set(busy_fraction);
        StageStats {
            name: self.name.to_string(),
            concurrency: self.concurrency,
            reorder_window: self.window,
            queue_capacity: self.queue_capacity,
            queue_depth: self.queue_depth(),
            items_in: self.received.load(Ordering::Relaxed),
            items_out: self.out.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            cut: self.cut.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            peak_held: self.peak_held.load(Ordering::Relaxed),
            busy,
            busy_fraction,
        }
    }
}

/// One stage's counters at one moment (see
/// [`PipelineHandle::stats`](crate::PipelineHandle::stats)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// Its configured concurrency.
    pub concurrency: usize,
    /// Its configured reorder window (items held at once).
    pub reorder_window: usize,
    /// Its configured queue capacity.
    pub queue_capacity: usize,
    /// Items waiting in the queue in front of it.
    pub queue_depth: u64,
    /// Items taken from its queue.
    pub items_in: u64,
    /// Items handed to the next stage (or the output), failed ones included.
    pub items_out: u64,
    /// Items its service failed with an error.
    pub failed: u64,
    /// Items its service panicked on.
    pub panicked: u64,
    /// Items dropped here by a drain deadline.
    pub cut: u64,
    /// Calls in flight now.
    pub in_flight: usize,
    /// Most calls ever in flight at once (never above `concurrency`).
    pub peak_in_flight: usize,
    /// Items held now: in flight, waiting for an earlier item, or waiting for
    /// room downstream.
    pub held: usize,
    /// Most items ever held at once (never above `reorder_window`).
    pub peak_held: usize,
    /// Total time its calls took, summed over calls.
    pub busy: Duration,
    /// `busy / (concurrency × time since the pipeline started)`, in 0..=1:
    /// how much of its capacity the stage used.
    pub busy_fraction: f64,
}

/// The index of the bottleneck stage: the one using the largest fraction
/// of its capacity; between equal fractions, the one with the deeper
/// queue; between those, the earlier one. `None` when no stage has worked
/// or queued anything yet.
pub(crate) fn bottleneck(stages: &[StageStats]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in stages.iter().enumerate() {
        if s.busy_fraction == 0.0 && s.queue_depth == 0 {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let b = &stages[b];
                s.busy_fraction > b.busy_fraction
                    || (s.busy_fraction == b.busy_fraction && s.queue_depth > b.queue_depth)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(busy_fraction: f64, queue_depth: u64) -> StageStats {
        StageStats {
            name: String::new(),
            concurrency: 1,
            reorder_window: 1,
            queue_capacity: 1,
            queue_depth,
            items_in: 0,
            items_out: 0,
            failed: 0,
            panicked: 0,
            cut: 0,
            in_flight: 0,
            peak_in_flight: 0,
            held: 0,
            peak_held: 0,
            busy: Duration::ZERO,
            busy_fraction,
        }
    }

    #[test]
    fn the_busiest_stage_is_the_bottleneck() {
        assert_eq!(
            bottleneck(&[stage(0.2, 9), stage(0.9, 0), stage(0.5, 3)]),
            Some(1)
        );
    }

    #[test]
    fn equal_fractions_are_decided_by_queue_depth_then_position() {
        assert_eq!(bottleneck(&[stage(1.0, 2), stage(1.0, 5)]), Some(1));
        assert_eq!(bottleneck(&[stage(1.0, 5), stage(1.0, 5)]), Some(0));
    }

    #[test]
    fn an_idle_pipeline_has_no_bottleneck() {
        assert_eq!(bottleneck(&[stage(0.0, 0), stage(0.0, 0)]), None);
    }
}
