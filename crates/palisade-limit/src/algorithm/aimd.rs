//! Additive increase, multiplicative decrease on an overload signal.

use std::time::Duration;

use palisade_core::ConfigError;

use super::{Algorithm, Bounds, Sample};

const COMPONENT: &str = "limit";

/// Additive increase, multiplicative decrease: `+1` per successful call,
/// `× backoff_ratio` on a drop or on a call slower than the latency ceiling.
///
/// Modelled on Netflix concurrency-limits' `AIMDLimit`. It is the simplest
/// algorithm and the only one that does not read the latency curve: it
/// needs a signal from below. Either the upstream sheds load in a way the
/// classifier sees (timeouts, 503, 429, `RESOURCE_EXHAUSTED`), or
/// [`timeout`](AimdBuilder::timeout) is set to a latency the calls must not
/// exceed (about twice the healthy latency). Without either, the limit
/// climbs to `max_limit` and the upstream's own queue absorbs the excess.
///
/// The limit grows only when the call used at least half of it
/// (`in_flight * 2 >= limit`), so a lightly loaded service does not grow a
/// limit it never tested.
///
/// See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct Aimd {
    bounds: Bounds,
    backoff_ratio: f64,
    timeout: Duration,
}

/// Builds an [`Aimd`]; see each method for its default.
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    bounds: Bounds,
    backoff_ratio: f64,
    timeout: Duration,
}

// === impl Aimd ===

impl Aimd {
    /// A builder starting from the defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder::default()
    }
}

impl Default for Aimd {
    fn default() -> Self {
        AimdBuilder::default()
            .build()
            .expect("the default AIMD configuration is valid")
    }
}

impl Algorithm for Aimd {
    fn name(&self) -> &'static str {
        "aimd"
    }

    fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        let limit = self.bounds.clamp(limit);
        if sample.dropped || sample.rtt > self.timeout {
            // Flooring makes small limits move too: 5 * 0.9 = 4.5 -> 4.
            let reduced = (limit as f64 * self.backoff_ratio).floor();
            let reduced = if reduced.is_finite() && reduced >= 0.0 {
                reduced as usize
            } else {
                self.bounds.min
            };
            self.bounds.clamp(reduced.min(limit.saturating_sub(1)))
        } else if sample.in_flight.saturating_mul(2) >= limit {
            self.bounds.clamp(limit.saturating_add(1))
        } else {
            limit
        }
    }
}

// === impl AimdBuilder ===

impl Default for AimdBuilder {
    fn default() -> Self {
        Self {
            bounds: Bounds::DEFAULT,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(1),
        }
    }
}

impl AimdBuilder {
    bounds_setters!();

    /// What the limit is multiplied by on a drop or a call slower than
    /// [`timeout`](Self::timeout) (default 0.9, in `(0, 1)`). A gentle cut:
    /// every dropped call cuts again, so a burst of timeouts compounds.
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// The latency ceiling: a call slower than this counts as a drop
    /// (default 1 s, a ceiling few interactive services should reach when
    /// healthy). Set it to about twice the healthy latency to make AIMD
    /// settle without drops from below; with 2× the service time it keeps
    /// the limit between `1.8×` and `2×` the upstream's concurrency.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        let bounds = self.bounds;
        bounds.validate(COMPONENT)?;
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "aimd.backoff_ratio",
                "must be in (0, 1)",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "aimd.timeout",
                "must be greater than zero",
            ));
        }
        Ok(Aimd {
            bounds,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
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
    fn grows_by_one_when_used() {
        let mut a = Aimd::default();
        assert_eq!(a.update(&sample(10, 10, false), 20), 21);
    }

    #[test]
    fn does_not_grow_when_app_limited() {
        let mut a = Aimd::default();
        assert_eq!(a.update(&sample(10, 9, false), 20), 20);
    }

    #[test]
    fn backs_off_on_drop_and_on_timeout() {
        let mut a = Aimd::default();
        assert_eq!(a.update(&sample(10, 20, true), 20), 18);
        assert_eq!(a.update(&sample(1_001, 20, false), 20), 18);
        // Small limits still move.
        assert_eq!(a.update(&sample(10, 5, true), 5), 4);
        assert_eq!(a.update(&sample(10, 1, true), 1), 1);
    }

    #[test]
    fn build_names_the_field() {
        let err = Aimd::builder().backoff_ratio(1.0).build().unwrap_err();
        assert_eq!(err.field(), "aimd.backoff_ratio");
        let err = Aimd::builder().timeout(Duration::ZERO).build().unwrap_err();
        assert_eq!(err.field(), "aimd.timeout");
        let err = Aimd::builder().min_limit(0).build().unwrap_err();
        assert_eq!(err.field(), "min_limit");
        let err = Aimd::builder().initial_limit(5000).build().unwrap_err();
        assert_eq!(err.field(), "initial_limit");
    }
}
