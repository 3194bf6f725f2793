//! The gradient between long-term and short-term latency.

use palisade_core::ConfigError;

use super::knee::{KneeSearch, Step};
use super::{Algorithm, Bounds, Sample};

const COMPONENT: &str = "limit";

/// Moves the limit by the ratio of a long-term latency to the latest one.
///
/// Modelled on Netflix concurrency-limits' `Gradient2Limit`. The long-term
/// latency is an exponentially weighted average over about
/// [`window`](Gradient2Builder::window) samples. Each sample computes
///
/// ```text
/// gradient = clamp(tolerance * long / rtt, 0.5, 1.0)
/// target   = limit * gradient + queue_size,  queue_size = sqrt(limit) / 2
/// limit    = limit * (1 - smoothing) + target * smoothing
/// ```
///
/// so the limit grows by `smoothing * queue_size` per call while the latency
/// stays within `tolerance` of the long-term one, and settles where it is
/// about `tolerance` times the long-term latency: with an upstream of `C`
/// slots and a fixed service time, near `1.5 C + sqrt(limit) / 2`, inside
/// `[C, 2C]` for `C >= 4`. A drop counts as the lowest gradient (0.5).
/// A call that used less than half the limit does not grow it.
///
/// # Differences from Netflix's `Gradient2Limit`
///
/// - The long-term average learns only from calls that show no queue of
///   ours (latency within `tolerance` of it). Netflix's averages every
///   call, so under sustained load it follows the queue the limit itself
///   builds and the limit drifts up without bound. A latency rise that
///   survives halving the concurrency is the upstream's own, and is learnt.
/// - The first long-term latency is measured by halving the limit until the
///   latency stops falling (with [`probing`](Algorithm::probing) reported,
///   so the limiter queues rather than rejects meanwhile), unless the first
///   call used less than half the limit. Learnt at an initial limit above
///   the upstream's capacity, it would hold the limit there.
/// - As in Netflix's, a long-term latency more than twice the latest decays
///   by 5% per call, so a latency that dropped for good is followed fast.
///
/// See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    bounds: Bounds,
    tolerance: f64,
    smoothing: f64,
    /// Weight of one sample in the long-term average: `2 / (window + 1)`.
    alpha: f64,
    /// The limit as a real number; smoothing moves it by fractions.
    estimate: f64,
    /// What the last update returned, to notice a limit changed elsewhere.
    last: Option<usize>,
    /// Long-term latency in nanoseconds; `None` until measured.
    long: Option<f64>,
    /// In-flight count of the latest call that showed no queue.
    base_in_flight: usize,
    search: Option<KneeSearch>,
}

/// Builds a [`Gradient2`]; see each method for its default.
#[derive(Debug, Clone)]
pub struct Gradient2Builder {
    bounds: Bounds,
    window: usize,
    tolerance: f64,
    smoothing: f64,
}

// === impl Gradient2 ===

impl Gradient2 {
    /// A builder starting from the defaults.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder::default()
    }

    fn queue_size(limit: f64) -> f64 {
        limit.max(1.0).sqrt() / 2.0
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
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2Builder::default()
            .build()
            .expect("the default Gradient2 configuration is valid")
    }
}

impl Algorithm for Gradient2 {
    fn name(&self) -> &'static str {
        "gradient2"
    }

    fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let limit = self.bounds.clamp(limit);
        let rtt = sample.rtt.as_nanos() as f64;
        if let Some(search) = &mut self.search {
            match search.on_sample(sample) {
                Step::Probe(target) => return self.hold(self.bounds.clamp(target)),
                Step::Done { baseline, restore } => {
                    self.base_in_flight = search.target();
                    self.search = None;
                    self.long = Some(baseline.max(1.0));
                    return self.finish(restore as f64);
                }
            }
        }
        if self.last != Some(limit) {
            self.estimate = limit as f64;
        }
        let Some(mut long) = self.long else {
            if sample.in_flight.saturating_mul(2) < limit {
                self.long = Some(rtt.max(1.0));
                self.base_in_flight = sample.in_flight;
                return self.hold(limit);
            }
            let search = KneeSearch::start(limit, rtt, self.bounds.min);
            let target = self.bounds.clamp(search.target());
            self.search = Some(search);
            return self.hold(target);
        };

        let short = rtt.max(1.0);
        let queue_free = short <= self.tolerance * long;
        if queue_free {
            self.base_in_flight = sample.in_flight;
        }
        if queue_free || sample.in_flight.saturating_mul(2) <= self.base_in_flight {
            long += self.alpha * (short - long);
        }
        if long > 2.0 * short {
            long *= 0.95;
        }
        let long = long.max(1.0);
        self.long = Some(long);

        let gradient = if sample.dropped {
            0.5
        } else if (sample.in_flight as f64) < self.estimate / 2.0 {
            return self.hold(limit);
        } else {
            let g = self.tolerance * long / short;
            if g.is_finite() {
                g.clamp(0.5, 1.0)
            } else {
                1.0
            }
        };
        let target = self.estimate * gradient + Self::queue_size(self.estimate);
        self.finish(self.estimate * (1.0 - self.smoothing) + target * self.smoothing)
    }

    fn probing(&self) -> bool {
        self.search.is_some()
    }
}

// === impl Gradient2Builder ===

impl Default for Gradient2Builder {
    fn default() -> Self {
        Self {
            bounds: Bounds::DEFAULT,
            window: 600,
            tolerance: 1.5,
            smoothing: 0.2,
        }
    }
}

impl Gradient2Builder {
    bounds_setters!();

    /// How many samples the long-term latency averages over (default 600,
    /// at least 1): long enough that a burst of slow calls reads as a
    /// queue, short enough to follow a slow drift within minutes.
    pub fn window(mut self, samples: usize) -> Self {
        self.window = samples;
        self
    }

    /// How much slower than the long-term latency a call may be before the
    /// limit shrinks (default 1.5, at least 1): the standing queue the limit
    /// keeps, as a fraction of the latency.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// How far each sample moves the limit toward its target (default 0.2,
    /// in `(0, 1]`): lower is steadier and slower.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        let bounds = self.bounds;
        bounds.validate(COMPONENT)?;
        if self.window == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "gradient2.window",
                "must be at least 1",
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "gradient2.tolerance",
                "must be a finite number of at least 1",
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "gradient2.smoothing",
                "must be in (0, 1]",
            ));
        }
        Ok(Gradient2 {
            bounds,
            tolerance: self.tolerance,
            smoothing: self.smoothing,
            alpha: 2.0 / (self.window as f64 + 1.0),
            estimate: bounds.initial as f64,
            last: None,
            long: None,
            base_in_flight: 0,
            search: None,
        })
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

    #[test]
    fn app_limited_first_call_sets_the_baseline_without_probing() {
        let mut g = Gradient2::default();
        assert_eq!(g.update(&sample(20, 2, false), 20), 20);
        assert!(!g.probing());
        assert_eq!(g.long, Some(20e6));
    }

    #[test]
    fn a_loaded_first_call_starts_a_search() {
        let mut g = Gradient2::default();
        assert_eq!(g.update(&sample(50, 20, false), 20), 10);
        assert!(g.probing());
    }

    #[test]
    fn grows_without_queue_and_shrinks_on_drop() {
        let mut g = Gradient2::default();
        g.update(&sample(20, 2, false), 20);
        let mut limit = 20;
        for _ in 0..20 {
            limit = g.update(&sample(20, limit, false), limit);
        }
        assert!(limit > 20, "{limit}");
        let dropped = g.update(&sample(20, limit, true), limit);
        assert!(dropped < limit);
    }

    #[test]
    fn build_names_the_field() {
        let err = Gradient2::builder().tolerance(0.5).build().unwrap_err();
        assert_eq!(err.field(), "gradient2.tolerance");
        let err = Gradient2::builder().smoothing(0.0).build().unwrap_err();
        assert_eq!(err.field(), "gradient2.smoothing");
        let err = Gradient2::builder().window(0).build().unwrap_err();
        assert_eq!(err.field(), "gradient2.window");
        let err = Gradient2::builder().max_limit(0).build().unwrap_err();
        assert_eq!(err.field(), "max_limit");
    }
}
