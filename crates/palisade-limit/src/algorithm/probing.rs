//! A gradient over a periodically re-measured minimum latency.

use std::time::Duration;

use palisade_core::ConfigError;

use super::{Algorithm, Bounds, Sample};

const COMPONENT: &str = "limit";

/// A window never holds more samples than this: it closes early, bounding
/// memory and the sort at high call rates.
const MAX_WINDOW_SAMPLES: usize = 1024;

/// Compares each window's latency with a minimum latency it re-measures
/// every minute or so at a low concurrency.
///
/// Modelled on Envoy's adaptive concurrency filter (gradient controller).
/// Calls are grouped into windows of
/// [`sample_window`](ProbingGradientBuilder::sample_window) (by
/// [`Sample::at_nanos`]); at each window's end, with `rtt` its
/// [`percentile`](ProbingGradientBuilder::percentile) latency:
///
/// ```text
/// gradient = clamp((min_rtt + buffer_fraction * min_rtt) / rtt, 0.5, 2.0)
/// scaled   = gradient * limit
/// limit    = floor(scaled + sqrt(scaled))
/// ```
///
/// The `sqrt` headroom keeps a small queue, so the limit settles where the
/// latency is about `(1 + buffer_fraction)` times `min_rtt` plus that
/// headroom: for an upstream of `C` slots, near `1.25 C + sqrt(1.25 C)`,
/// inside `[C, 2C]` for `C >= 3`. A window whose busiest call used less than
/// half the limit does not grow it (Envoy's does, up to the maximum), and
/// a window with a drop does not grow it either. A window in which the limit
/// never filled ([`Sample::saturated`]) and nothing dropped does not shrink
/// it: below the limit, slower calls are not the limit's doing.
///
/// `min_rtt` is first the least latency of the first window (the
/// upstream's queue was empty when it began), and is re-measured every
/// [`min_rtt_interval`](ProbingGradientBuilder::min_rtt_interval) (plus up
/// to [`jitter`](ProbingGradientBuilder::jitter) of it, from
/// [`seed`](ProbingGradientBuilder::seed)). If no call of the interval found
/// the limit full, the upstream's queue had room to empty, and the least
/// latency of the interval is the new `min_rtt`: no probe. Otherwise (the
/// limit was saturated, so every latency may carry queueing) it probes: the
/// limit drops to half its value (at least
/// [`probe_limit`](ProbingGradientBuilder::probe_limit)) until
/// [`probe_samples`](ProbingGradientBuilder::probe_samples) calls admitted
/// under it have completed; their `percentile` latency is the new
/// `min_rtt`, and the limit returns to where it was before the probe.
///
/// # Differences from Envoy
///
/// Envoy drops the limit to a small fixed concurrency for a probe and
/// rejects with 503 whatever exceeds it, a burst of errors every minute
/// even at moderate load. Here the probe only halves the limit: a limit
/// settled under twice the upstream's concurrency then drains the queue it
/// built, so the latency measured is the upstream's own, and a demand under
/// half the limit (any load short of overload) is never held back. And
/// [`probing`](Algorithm::probing) reports the probe, so the limiter holds
/// what does exceed it in its wait queue instead of refusing it: a probe
/// costs a short delay, not errors.
///
/// See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct ProbingGradient {
    bounds: Bounds,
    sample_window: u64,
    percentile: f64,
    buffer_fraction: f64,
    min_rtt_interval: u64,
    jitter: f64,
    probe_limit: usize,
    probe_samples: usize,
    rng: u64,
    estimate: usize,
    /// Minimum latency in nanoseconds; `None` until first measured.
    min_rtt: Option<f64>,
    probe: Option<Probe>,
    next_probe_at: u64,
    window: Window,
    /// The least latency seen since `min_rtt` was last measured (ns;
    /// `u64::MAX`: none).
    interval_min: u64,
    /// Whether a call since then was admitted with the limit full: the
    /// upstream's queue may never have emptied, so `interval_min` may carry
    /// queueing.
    saturated: bool,
}

#[derive(Debug, Clone)]
struct Probe {
    /// The limit while probing.
    limit: usize,
    restore: usize,
    rtts: Vec<u64>,
    skipped: usize,
}

#[derive(Debug, Clone, Default)]
struct Window {
    start: Option<u64>,
    rtts: Vec<u64>,
    max_in_flight: usize,
    dropped: bool,
    /// Some call found the limit full during the window.
    saturated: bool,
}

/// Builds a [`ProbingGradient`]; see each method for its default.
#[derive(Debug, Clone)]
pub struct ProbingGradientBuilder {
    bounds: Bounds,
    sample_window: Duration,
    percentile: f64,
    buffer_fraction: f64,
    min_rtt_interval: Duration,
    jitter: f64,
    probe_limit: Option<usize>,
    probe_samples: usize,
    seed: u64,
}

/// The `p` quantile (nearest rank) of `values`, which must not be empty.
fn percentile(values: &mut [u64], p: f64) -> u64 {
    let rank = (p * values.len() as f64).ceil() as usize;
    let index = rank.clamp(1, values.len()) - 1;
    *values.select_nth_unstable(index).1
}

// === impl ProbingGradient ===

impl ProbingGradient {
    /// A builder starting from the defaults.
    pub fn builder() -> ProbingGradientBuilder {
        ProbingGradientBuilder::default()
    }

    /// xorshift64: a deterministic fraction in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Starts a new measurement interval at `now`.
    fn restart_interval(&mut self, now: u64) {
        self.interval_min = u64::MAX;
        self.saturated = false;
        self.schedule_probe(now);
    }

    fn schedule_probe(&mut self, now: u64) {
        let extra = self.min_rtt_interval as f64 * self.jitter * self.next_unit();
        self.next_probe_at = now
            .saturating_add(self.min_rtt_interval)
            .saturating_add(extra as u64);
    }

    fn start_probe(&mut self, restore: usize) -> usize {
        // Half the limit drains a queue the limit itself built (a settled
        // limit is under twice the upstream's concurrency) while a demand
        // under half the limit, the normal case, is never held back.
        let limit = self.bounds.clamp(self.probe_limit.max(restore / 2));
        self.probe = Some(Probe {
            limit,
            restore,
            rtts: Vec::with_capacity(self.probe_samples),
            skipped: 0,
        });
        self.window = Window::default();
        limit
    }

    fn on_probe_sample(&mut self, sample: &Sample) -> usize {
        let Some(probe) = &mut self.probe else {
            return self.estimate;
        };
        // Calls admitted before the limit dropped still carry the queue; at
        // most `restore` were in flight.
        if sample.in_flight > probe.limit && probe.skipped < probe.restore {
            probe.skipped += 1;
            return probe.limit;
        }
        probe
            .rtts
            .push(sample.rtt.as_nanos().min(u64::MAX as u128) as u64);
        if probe.rtts.len() < self.probe_samples {
            return probe.limit;
        }
        let min_rtt = percentile(&mut probe.rtts, self.percentile);
        let restore = self.bounds.clamp(probe.restore);
        self.probe = None;
        self.min_rtt = Some((min_rtt as f64).max(1.0));
        self.restart_interval(sample.at_nanos);
        self.estimate = restore;
        restore
    }

    fn on_window(&mut self, limit: usize, now: u64) -> usize {
        let mut window = std::mem::take(&mut self.window);
        if window.rtts.is_empty() {
            return limit;
        }
        let Some(min_rtt) = self.min_rtt else {
            // The first window: the upstream's queue was empty when it
            // began, so the first calls' latency is its own.
            let least = window.rtts.iter().copied().min().unwrap_or(1);
            self.min_rtt = Some((least as f64).max(1.0));
            self.restart_interval(now);
            return limit;
        };
        let rtt = (percentile(&mut window.rtts, self.percentile) as f64).max(1.0);
        let mut gradient = (min_rtt * (1.0 + self.buffer_fraction) / rtt).clamp(0.5, 2.0);
        if !gradient.is_finite() {
            gradient = 1.0;
        }
        let app_limited = window.max_in_flight.saturating_mul(2) < limit;
        if gradient >= 1.0 && (app_limited || window.dropped) {
            return limit;
        }
        // Only a window in which the limit filled can blame the latency on
        // the concurrency it allows: slower calls below the limit (a burst
        // that queued elsewhere, a slow request) do not lower it, or the
        // next burst of that size would be refused by a healthy upstream.
        // Under overload the limit fills at once, so this costs nothing.
        if gradient < 1.0 && !window.saturated && !window.dropped {
            return limit;
        }
        let scaled = gradient * limit as f64;
        let next = (scaled + scaled.sqrt()).floor();
        let next = if next.is_finite() {
            next.min(self.bounds.max as f64) as usize
        } else {
            limit
        };
        self.bounds.clamp(next)
    }
}

impl Default for ProbingGradient {
    fn default() -> Self {
        ProbingGradientBuilder::default()
            .build()
            .expect("the default probing gradient configuration is valid")
    }
}

impl Algorithm for ProbingGradient {
    fn name(&self) -> &'static str {
        "probing_gradient"
    }

    fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let limit = self.bounds.clamp(limit);
        if self.probe.is_some() {
            return self.on_probe_sample(sample);
        }
        let rtt = sample.rtt.as_nanos().min(u64::MAX as u128) as u64;
        self.interval_min = self.interval_min.min(rtt);
        self.saturated |= sample.saturated || sample.in_flight >= limit;
        if self.min_rtt.is_some() && sample.at_nanos >= self.next_probe_at {
            if self.saturated {
                self.estimate = self.start_probe(limit);
                return self.estimate;
            }
            // Never saturated since the last measurement: the upstream's
            // queue had room to empty, so the least latency seen is its
            // own. Re-measured without lowering the limit.
            self.min_rtt = Some((self.interval_min as f64).max(1.0));
            self.restart_interval(sample.at_nanos);
        }
        let start = *self.window.start.get_or_insert(sample.at_nanos);
        self.window
            .rtts
            .push(sample.rtt.as_nanos().min(u64::MAX as u128) as u64);
        self.window.max_in_flight = self.window.max_in_flight.max(sample.in_flight);
        self.window.dropped |= sample.dropped;
        self.window.saturated |= sample.saturated || sample.in_flight >= limit;
        let elapsed = sample.at_nanos.saturating_sub(start);
        if elapsed >= self.sample_window || self.window.rtts.len() >= MAX_WINDOW_SAMPLES {
            self.estimate = self.on_window(limit, sample.at_nanos);
        } else {
            self.estimate = limit;
        }
        self.estimate
    }

    fn probing(&self) -> bool {
        self.probe.is_some()
    }
}

// === impl ProbingGradientBuilder ===

impl Default for ProbingGradientBuilder {
    fn default() -> Self {
        Self {
            bounds: Bounds::DEFAULT,
            sample_window: Duration::from_millis(100),
            percentile: 0.5,
            buffer_fraction: 0.25,
            min_rtt_interval: Duration::from_secs(60),
            jitter: 0.15,
            probe_limit: None,
            probe_samples: 50,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl ProbingGradientBuilder {
    bounds_setters!();

    /// How long calls are grouped before the limit moves (default 100 ms,
    /// above zero; a window also closes at 1024 calls).
    pub fn sample_window(mut self, window: Duration) -> Self {
        self.sample_window = window;
        self
    }

    /// Which latency of a window (and of a probe) counts (default 0.5, the
    /// median, in `(0, 1]`): robust to a few slow calls.
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self
    }

    /// How much latency over `min_rtt` is tolerated, as a fraction of it
    /// (default 0.25, finite and at least 0).
    pub fn buffer_fraction(mut self, fraction: f64) -> Self {
        self.buffer_fraction = fraction;
        self
    }

    /// How often `min_rtt` is re-measured (default 60 s, above zero).
    pub fn min_rtt_interval(mut self, interval: Duration) -> Self {
        self.min_rtt_interval = interval;
        self
    }

    /// Up to this fraction of `min_rtt_interval` is added to each interval
    /// (default 0.15, in `[0, 1]`), so limiters in front of one upstream do
    /// not probe in step.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The limit while `min_rtt` is measured (default 3, clamped to
    /// `[min_limit, max_limit]`): low enough to leave no queue at most
    /// upstreams, high enough to keep some calls going.
    pub fn probe_limit(mut self, limit: usize) -> Self {
        self.probe_limit = Some(limit);
        self
    }

    /// How many calls admitted under the probe limit measure `min_rtt`
    /// (default 50, at least 1).
    pub fn probe_samples(mut self, samples: usize) -> Self {
        self.probe_samples = samples;
        self
    }

    /// Seeds the interval jitter (default a fixed constant). Give limiters
    /// that share an upstream different seeds.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<ProbingGradient, ConfigError> {
        let bounds = self.bounds;
        bounds.validate(COMPONENT)?;
        let nanos = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        if self.sample_window.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.sample_window",
                "must be greater than zero",
            ));
        }
        if !(self.percentile > 0.0 && self.percentile <= 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.percentile",
                "must be in (0, 1]",
            ));
        }
        if !(self.buffer_fraction.is_finite() && self.buffer_fraction >= 0.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.buffer_fraction",
                "must be a finite number of at least 0",
            ));
        }
        if self.min_rtt_interval.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.min_rtt_interval",
                "must be greater than zero",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.jitter",
                "must be in [0, 1]",
            ));
        }
        let probe_limit = match self.probe_limit {
            None => bounds.clamp(3),
            Some(limit) if (bounds.min..=bounds.max).contains(&limit) => limit,
            Some(_) => {
                return Err(ConfigError::new(
                    COMPONENT,
                    "probing_gradient.probe_limit",
                    format!("must be within [{}, {}]", bounds.min, bounds.max),
                ));
            }
        };
        if self.probe_samples == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "probing_gradient.probe_samples",
                "must be at least 1",
            ));
        }
        Ok(ProbingGradient {
            bounds,
            sample_window: nanos(self.sample_window),
            percentile: self.percentile,
            buffer_fraction: self.buffer_fraction,
            min_rtt_interval: nanos(self.min_rtt_interval),
            jitter: self.jitter,
            probe_limit,
            probe_samples: self.probe_samples,
            // xorshift must not start at zero.
            rng: self.seed.max(1),
            estimate: bounds.initial,
            min_rtt: None,
            probe: None,
            next_probe_at: 0,
            window: Window::default(),
            interval_min: u64::MAX,
            saturated: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, in_flight: usize, at_ms: u64) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            dropped: false,
            saturated: in_flight >= 4,
            at_nanos: at_ms * 1_000_000,
        }
    }

    /// Runs the first window with 20-25 ms calls at a full limit; returns
    /// the time after it.
    fn measured(p: &mut ProbingGradient) -> u64 {
        assert!(!p.probing(), "no probe at start");
        assert_eq!(p.update(&sample(20, 20, 0), 20), 20);
        assert_eq!(p.update(&sample(25, 20, 100), 20), 20);
        assert_eq!(p.min_rtt, Some(20e6), "the first window's least latency");
        assert!(!p.probing());
        100
    }

    #[test]
    fn min_rtt_comes_from_the_first_window_without_a_probe() {
        let mut p = ProbingGradient::default();
        assert_eq!(measured(&mut p), 100);
    }

    #[test]
    fn window_moves_the_limit_by_the_gradient() {
        let mut p = ProbingGradient::default();
        let at = measured(&mut p);
        // 40 ms at limit 20: gradient 25/40, 12.5 + sqrt(12.5) = 16.04.
        p.update(&sample(40, 20, at + 1), 20);
        assert_eq!(p.update(&sample(40, 20, at + 101), 20), 16);
        // Unloaded and fast: no growth while app-limited.
        p.update(&sample(20, 2, at + 102), 16);
        assert_eq!(p.update(&sample(20, 2, at + 202), 16), 16);
    }

    #[test]
    fn a_saturated_interval_ends_in_a_probe_at_half_the_limit() {
        let mut p = ProbingGradient::default();
        let at = measured(&mut p);
        // the limit was full during the interval
        p.update(&sample(30, 20, at + 1), 20);
        let later = at + 70_000;
        assert_eq!(p.update(&sample(30, 20, later), 20), 10);
        assert!(p.probing());
        let mut limit = 10;
        let mut t = later;
        while p.probing() {
            t += 1;
            limit = p.update(&sample(22, 10, t), limit);
        }
        assert_eq!(limit, 20, "restored");
        assert_eq!(p.min_rtt, Some(22e6));
        // never below probe_limit: a limit of 4 probes at 3
        let mut small = ProbingGradient::builder().initial_limit(4).build().unwrap();
        small.update(&sample(20, 4, 0), 4);
        small.update(&sample(20, 4, 100), 4);
        small.update(&sample(20, 4, 101), 4);
        assert_eq!(small.update(&sample(20, 4, 70_000), 4), 3);
    }

    #[test]
    fn an_unsaturated_interval_re_measures_without_a_probe() {
        let mut p = ProbingGradient::default();
        let at = measured(&mut p);
        // the no-load latency drifted to 30 ms; the limit never filled
        p.update(&sample(30, 2, at + 1), 20);
        p.update(&sample(31, 2, at + 70_000), 20);
        assert!(!p.probing());
        assert_eq!(p.min_rtt, Some(30e6));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&mut [5, 1, 3, 2, 4], 0.5), 3);
        assert_eq!(percentile(&mut [5, 1, 3, 2, 4], 1.0), 5);
        assert_eq!(percentile(&mut [7], 0.01), 7);
    }

    #[test]
    fn build_names_the_field() {
        let err = ProbingGradient::builder()
            .percentile(0.0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "probing_gradient.percentile");
        let err = ProbingGradient::builder()
            .probe_limit(2000)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "probing_gradient.probe_limit");
        let err = ProbingGradient::builder().jitter(2.0).build().unwrap_err();
        assert_eq!(err.field(), "probing_gradient.jitter");
        assert_eq!(
            ProbingGradient::builder()
                .min_limit(5)
                .initial_limit(5)
                .build()
                .unwrap()
                .probe_limit,
            5
        );
    }
}
