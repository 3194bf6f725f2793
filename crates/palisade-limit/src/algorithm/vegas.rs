//! TCP Vegas: the queue estimated from latency over the no-load latency.

use palisade_core::ConfigError;

use super::knee::{KneeSearch, Step};
use super::{Algorithm, Bounds, Sample};

const COMPONENT: &str = "limit";

/// Keeps a small standing queue, estimated from the latency over the
/// no-load latency.
///
/// Modelled on Netflix concurrency-limits' `VegasLimit` (after TCP Vegas).
/// With `rtt_noload` the lowest latency seen, each call estimates the queue
/// the limit holds as `ceil(limit * (1 - rtt_noload / rtt))` and, with
/// `lg = max(1, log10(limit))`:
///
/// | estimated queue | the limit |
/// |---|---|
/// | `<= threshold * lg` | grows by `beta * lg` (nothing queued: catch up fast) |
/// | `< alpha * lg` | grows by `lg` |
/// | `> beta * lg` | shrinks by `lg` |
/// | otherwise | stays |
///
/// A drop shrinks it by `lg`; a call that used less than half the limit
/// leaves it alone. With an upstream of `C` slots the limit settles at
/// `C` plus 2 to 4 `lg`: inside `[C, 2C]` for `C >= 4`.
///
/// `rtt_noload` only falls, so it is re-measured every
/// `probe_multiplier * limit` calls (jittered down by up to half, from
/// [`seed`](VegasBuilder::seed)), to learn a no-load latency that rose.
///
/// # Differences from Netflix's `VegasLimit`
///
/// - Defaults `alpha = 2`, `beta = 4` (Netflix: 3 and 6), so the standing
///   queue fits in `[C, 2C]` down to `C = 4`.
/// - Netflix re-measures `rtt_noload` by taking the next call's latency.
///   Under a standing queue that is the queued latency, and each probe
///   ratchets the limit up by one Vegas queue. Here a probe (and the first
///   measurement, unless the first call used less than half the limit)
///   halves the limit until the latency stops falling, reporting
///   [`probing`](Algorithm::probing) so the limiter queues rather than
///   rejects meanwhile, then restores the limit.
///
/// See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct Vegas {
    bounds: Bounds,
    alpha: f64,
    beta: f64,
    threshold: f64,
    probe_multiplier: f64,
    rng: u64,
    estimate: f64,
    last: Option<usize>,
    /// The no-load latency in nanoseconds; `None` until measured.
    rtt_noload: Option<f64>,
    since_probe: usize,
    /// This probe period's jitter, in `[0.5, 1)`.
    probe_jitter: f64,
    search: Option<KneeSearch>,
}

/// Builds a [`Vegas`]; see each method for its default.
#[derive(Debug, Clone)]
pub struct VegasBuilder {
    bounds: Bounds,
    alpha: f64,
    beta: f64,
    threshold: f64,
    probe_multiplier: usize,
    seed: u64,
}

// === impl Vegas ===

impl Vegas {
    /// A builder starting from the defaults.
    pub fn builder() -> VegasBuilder {
        VegasBuilder::default()
    }

    /// xorshift64: a deterministic jitter in `[0.5, 1)`.
    fn next_jitter(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        0.5 + (x >> 11) as f64 / (1u64 << 53) as f64 / 2.0
    }

    fn finish(&mut self, estimate: f64) -> usize {
        let estimate = if estimate.is_finite() {
            estimate.clamp(self.bounds.min as f64, self.bounds.max as f64)
        } else {
            self.bounds.initial as f64
        };
        self.estimate = estimate;
        let limit = self.bounds.clamp(estimate as usize);
        self.last = Some(limit);
        limit
    }

    fn hold(&mut self, limit: usize) -> usize {
        self.last = Some(limit);
        limit
    }

    fn start_search(&mut self, limit: usize, rtt: f64) -> usize {
        let search = KneeSearch::start(limit, rtt, self.bounds.min);
        let target = self.bounds.clamp(search.target());
        self.search = Some(search);
        self.hold(target)
    }
}

impl Default for Vegas {
    fn default() -> Self {
        VegasBuilder::default()
            .build()
            .expect("the default Vegas configuration is valid")
    }
}

impl Algorithm for Vegas {
    fn name(&self) -> &'static str {
        "vegas"
    }

    fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let limit = self.bounds.clamp(limit);
        let rtt = (sample.rtt.as_nanos() as f64).max(1.0);
        if let Some(search) = &mut self.search {
            match search.on_sample(sample) {
                Step::Probe(target) => return self.hold(self.bounds.clamp(target)),
                Step::Done { baseline, restore } => {
                    self.search = None;
                    self.rtt_noload = Some(baseline.max(1.0));
                    self.since_probe = 0;
                    self.probe_jitter = self.next_jitter();
                    return self.finish(restore as f64);
                }
            }
        }
        if self.last != Some(limit) {
            self.estimate = limit as f64;
        }
        let app_limited = sample.in_flight.saturating_mul(2) < limit;

        self.since_probe += 1;
        let probe_due =
            self.since_probe as f64 >= self.probe_jitter * self.probe_multiplier * self.estimate;
        let noload = match self.rtt_noload {
            Some(noload) if !probe_due => noload,
            _ => {
                self.since_probe = 0;
                self.probe_jitter = self.next_jitter();
                if app_limited {
                    // Too little load to hold a queue: this latency is the
                    // no-load one.
                    self.rtt_noload = Some(rtt);
                    return self.hold(limit);
                }
                return self.start_search(limit, rtt);
            }
        };
        if rtt < noload {
            self.rtt_noload = Some(rtt);
            return self.hold(limit);
        }

        let lg = self.estimate.max(1.0).log10().max(1.0);
        let estimate = if sample.dropped {
            self.estimate - lg
        } else if app_limited {
            return self.hold(limit);
        } else {
            let queue = (self.estimate * (1.0 - noload / rtt)).ceil();
            if queue <= self.threshold * lg {
                self.estimate + self.beta * lg
            } else if queue < self.alpha * lg {
                self.estimate + lg
            } else if queue > self.beta * lg {
                self.estimate - lg
            } else {
                return self.hold(limit);
            }
        };
        self.finish(estimate)
    }

    fn probing(&self) -> bool {
        self.search.is_some()
    }
}

// === impl VegasBuilder ===

impl Default for VegasBuilder {
    fn default() -> Self {
        Self {
            bounds: Bounds::DEFAULT,
            alpha: 2.0,
            beta: 4.0,
            threshold: 1.0,
            probe_multiplier: 30,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl VegasBuilder {
    bounds_setters!();

    /// Below `alpha * log10(limit)` queued calls the limit grows (default
    /// 2, above [`threshold`](Self::threshold)).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Above `beta * log10(limit)` queued calls the limit shrinks (default
    /// 4, above [`alpha`](Self::alpha)): the band between them is the
    /// standing queue Vegas keeps.
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// At or below `threshold * log10(limit)` queued calls the limit grows
    /// fast, by `beta * log10(limit)` (default 1, at least 0).
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The no-load latency is re-measured every `probe_multiplier * limit`
    /// calls, jittered down by up to half (default 30, at least 1): about
    /// once per 30 rounds of the limit.
    pub fn probe_multiplier(mut self, multiplier: usize) -> Self {
        self.probe_multiplier = multiplier;
        self
    }

    /// Seeds the probe jitter (default a fixed constant). Give limiters
    /// that share an upstream different seeds so they do not probe in
    /// step.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        let bounds = self.bounds;
        bounds.validate(COMPONENT)?;
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "vegas.threshold",
                "must be a finite number of at least 0",
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > self.threshold) {
            return Err(ConfigError::new(
                COMPONENT,
                "vegas.alpha",
                format!("must be finite and above threshold ({})", self.threshold),
            ));
        }
        if !(self.beta.is_finite() && self.beta > self.alpha) {
            return Err(ConfigError::new(
                COMPONENT,
                "vegas.beta",
                format!("must be finite and above alpha ({})", self.alpha),
            ));
        }
        if self.probe_multiplier == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "vegas.probe_multiplier",
                "must be at least 1",
            ));
        }
        let mut vegas = Vegas {
            bounds,
            alpha: self.alpha,
            beta: self.beta,
            threshold: self.threshold,
            probe_multiplier: self.probe_multiplier as f64,
            // xorshift must not start at zero.
            rng: self.seed.max(1),
            estimate: bounds.initial as f64,
            last: None,
            rtt_noload: None,
            since_probe: 0,
            probe_jitter: 1.0,
            search: None,
        };
        vegas.probe_jitter = vegas.next_jitter();
        Ok(vegas)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(rtt_ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            dropped,
            saturated: false,
            at_nanos: 0,
        }
    }

    fn warmed() -> Vegas {
        let mut v = Vegas::default();
        assert_eq!(v.update(&sample(20, 2, false), 20), 20);
        v
    }

    #[test]
    fn grows_fast_without_queue() {
        let mut v = warmed();
        assert_eq!(v.update(&sample(20, 20, false), 20), 25);
    }

    #[test]
    fn shrinks_with_a_long_queue_and_on_drop() {
        let mut v = warmed();
        // queue = ceil(20 * (1 - 20/40)) = 10 > beta * log10(20) = 5.2
        assert_eq!(v.update(&sample(40, 20, false), 20), 18);
        let mut v = warmed();
        assert_eq!(v.update(&sample(20, 20, true), 20), 18);
    }

    #[test]
    fn holds_inside_the_band_and_when_app_limited() {
        let mut v = warmed();
        // queue = ceil(20 * (1 - 20/25)) = 4, in [2.6, 5.2]
        assert_eq!(v.update(&sample(25, 20, false), 20), 20);
        assert_eq!(v.update(&sample(80, 5, false), 20), 20);
    }

    #[test]
    fn jitter_is_in_range() {
        let mut v = Vegas::default();
        for _ in 0..1000 {
            let j = v.next_jitter();
            assert!((0.5..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn build_names_the_field() {
        let err = Vegas::builder().beta(1.0).build().unwrap_err();
        assert_eq!(err.field(), "vegas.beta");
        let err = Vegas::builder().alpha(0.5).build().unwrap_err();
        assert_eq!(err.field(), "vegas.alpha");
        let err = Vegas::builder().threshold(f64::NAN).build().unwrap_err();
        assert_eq!(err.field(), "vegas.threshold");
        let err = Vegas::builder().probe_multiplier(0).build().unwrap_err();
        assert_eq!(err.field(), "vegas.probe_multiplier");
    }
}
