//! Finding the no-load latency under a standing queue the limiter caused.
//!
//! An algorithm that learns its baseline latency from samples taken while
//! its own limit keeps a queue in front of the upstream learns the queued
//! latency, and then holds (or grows) a limit above the upstream's
//! capacity: in a saturated upstream every sample looks the same, so
//! nothing in them says the queue is ours. The only way to tell is to lower
//! the concurrency and see whether the latency falls. [`KneeSearch`] halves
//! the limit, stage by stage, until the latency stops falling; that latency
//! is the no-load latency. The algorithm reports
//! [`probing`](super::Algorithm::probing) meanwhile, so the limiter queues
//! the calls over the lowered limit instead of rejecting them.

use super::Sample;

/// Samples per stage; the stage's latency is their minimum.
const STAGE_SAMPLES: usize = 3;

/// A stage whose latency is at least this fraction of the previous stage's
/// found no queue left to drain: halving the concurrency bought less than
/// 10% of latency.
const FLAT: f64 = 0.9;

/// One search, from a limit that may hold a queue down to the knee.
#[derive(Debug, Clone)]
pub(super) struct KneeSearch {
    target: usize,
    floor: usize,
    restore: usize,
    prev_rtt: f64,
    stage_min: f64,
    stage_samples: usize,
    skipped: usize,
}

/// What a sample did to the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Step {
    /// Still searching: hold the limit at this value.
    Probe(usize),
    /// Found the no-load latency (in nanoseconds); return to `restore`.
    Done { baseline: f64, restore: usize },
}

impl KneeSearch {
    /// Starts from `limit`, whose latency is `rtt_nanos`, halving it no
    /// lower than `floor`; the limit returns to `limit` afterwards.
    pub(super) fn start(limit: usize, rtt_nanos: f64, floor: usize) -> Self {
        let floor = floor.max(1);
        Self {
            target: (limit / 2).max(floor),
            floor,
            restore: limit.max(floor),
            prev_rtt: rtt_nanos,
            stage_min: f64::INFINITY,
            stage_samples: 0,
            skipped: 0,
        }
    }

    /// The lowered limit the search holds now.
    pub(super) fn target(&self) -> usize {
        self.target
    }

    /// Learns from one sample.
    pub(super) fn on_sample(&mut self, sample: &Sample) -> Step {
        // Calls admitted before the cut still carry the old queue. At most
        // `restore` of them were in flight, so after that many every sample
        // is one admitted under the cut (the bound only matters if a caller
        // reports in-flight counts that never fall).
        if sample.in_flight > self.target && self.skipped < self.restore {
            self.skipped += 1;
            return Step::Probe(self.target);
        }
        self.stage_min = self.stage_min.min(sample.rtt.as_nanos() as f64);
        self.stage_samples += 1;
        if self.stage_samples < STAGE_SAMPLES {
            return Step::Probe(self.target);
        }
        let rtt = self.stage_min;
        if rtt >= self.prev_rtt * FLAT || self.target <= self.floor {
            return Step::Done {
                baseline: rtt,
                restore: self.restore,
            };
        }
        self.prev_rtt = rtt;
        self.target = (self.target / 2).max(self.floor);
        self.stage_min = f64::INFINITY;
        self.stage_samples = 0;
        self.skipped = 0;
        Step::Probe(self.target)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// rtt = 20 ms * max(1, in_flight / 8): a knee at 8.
    fn at(in_flight: usize) -> Sample {
        let ms = 20.0 * (in_flight as f64 / 8.0).max(1.0);
        Sample {
            rtt: Duration::from_secs_f64(ms / 1000.0),
            in_flight,
            dropped: false,
            saturated: false,
            at_nanos: 0,
        }
    }

    #[test]
    fn halves_until_latency_stops_falling() {
        let mut search = KneeSearch::start(40, at(40).rtt.as_nanos() as f64, 1);
        let mut steps = 0;
        let baseline = loop {
            steps += 1;
            assert!(steps < 100);
            match search.on_sample(&at(search.target())) {
                Step::Probe(_) => {}
                Step::Done { baseline, restore } => {
                    assert_eq!(restore, 40);
                    break baseline;
                }
            }
        };
        assert_eq!(baseline, 20e6);
    }

    #[test]
    fn skips_calls_admitted_before_the_cut() {
        let mut search = KneeSearch::start(40, 100e6, 1);
        assert_eq!(search.on_sample(&at(40)), Step::Probe(20));
        assert_eq!(search.stage_samples, 0);
    }
}
