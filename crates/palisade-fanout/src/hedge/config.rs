//! Hedging configuration.

use std::time::Duration;

use crate::error::ConfigError;

/// When the next attempt of a request is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// After a fixed time without an answer.
    Fixed(Duration),
    /// After the given quantile (0 < q < 1, e.g. `0.95`) of recent attempt
    /// latencies. Until the latency window holds
    /// [`min_samples`](HedgeConfigBuilder::min_samples) samples no hedge is
    /// sent (there is no basis for one).
    Percentile(f64),
}

/// Validated hedging settings; build with [`HedgeConfig::builder`].
#[derive(Debug, Clone)]
pub struct HedgeConfig {
    pub(crate) name: &'static str,
    pub(crate) delay: Delay,
    pub(crate) max_attempts: usize,
    pub(crate) max_extra_load: f64,
    pub(crate) min_hedges_per_sec: f64,
    pub(crate) budget_window: Duration,
    pub(crate) latency_window: Duration,
    pub(crate) min_samples: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig::builder()
            .build()
            .expect("the defaults are valid")
    }
}

impl HedgeConfig {
    /// A builder starting from the defaults (see each method).
    pub fn builder() -> HedgeConfigBuilder {
        HedgeConfigBuilder {
            config: HedgeConfig {
                name: "hedge",
                delay: Delay::Percentile(0.95),
                max_attempts: 2,
                max_extra_load: 0.05,
                min_hedges_per_sec: 0.0,
                budget_window: Duration::from_secs(10),
                latency_window: Duration::from_secs(10),
                min_samples: 100,
            },
        }
    }

    /// The `hedge` metric label.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The hedge delay setting.
    pub fn delay(&self) -> Delay {
        self.delay
    }

    /// Attempts per request, the primary included.
    pub fn max_attempts(&self) -> usize {
        self.max_attempts
    }

    /// The extra load allowed, as a fraction of primary requests.
    pub fn max_extra_load(&self) -> f64 {
        self.max_extra_load
    }
}

/// Builds a [`HedgeConfig`].
#[derive(Debug, Clone)]
pub struct HedgeConfigBuilder {
    config: HedgeConfig,
}

impl HedgeConfigBuilder {
    /// The `hedge` metric label. Default `"hedge"`.
    pub fn name(mut self, name: &'static str) -> Self {
        self.config.name = name;
        self
    }

    /// When to send the next attempt. Default: `Delay::Percentile(0.95)`.
    pub fn delay(mut self, delay: Delay) -> Self {
        self.config.delay = delay;
        self
    }

    /// Attempts per request, the primary included (2 = at most one hedge).
    /// Default 2; at least 2.
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// Hedges allowed as a fraction of primary requests over the
    /// [`budget_window`](Self::budget_window) (Finagle's `maxExtraLoad`).
    /// Default 0.05 (5%); within 0.0..=1.0.
    pub fn max_extra_load(mut self, fraction: f64) -> Self {
        self.config.max_extra_load = fraction;
        self
    }

    /// Hedges allowed per second on top of the fraction, so a low-traffic
    /// service can hedge at all. Default 0 (the budget is the fraction
    /// alone); finite and not negative.
    pub fn min_hedges_per_sec(mut self, rate: f64) -> Self {
        self.config.min_hedges_per_sec = rate;
        self
    }

    /// The window the budget counts primaries and hedges over. Default 10 s.
    pub fn budget_window(mut self, window: Duration) -> Self {
        self.config.budget_window = window;
        self
    }

    /// The window of attempt latencies the percentile delay is taken from.
    /// Default 10 s.
    pub fn latency_window(mut self, window: Duration) -> Self {
        self.config.latency_window = window;
        self
    }

    /// Latency samples needed before a percentile delay hedges. Default 100;
    /// at least 1.
    pub fn min_samples(mut self, samples: u64) -> Self {
        self.config.min_samples = samples;
        self
    }

    /// Validates the settings; errors name the field.
    pub fn build(self) -> Result<HedgeConfig, ConfigError> {
        let c = self.config;
        if let Delay::Percentile(q) = c.delay
            && !(q > 0.0 && q < 1.0)
        {
            return Err(crate::error::config_error(
                "delay.percentile",
                format!("{q} is not within 0 < q < 1"),
            ));
        }
        if c.max_attempts < 2 {
            return Err(crate::error::config_error(
                "max_attempts",
                format!(
                    "is {} but must be at least 2 (the primary and a hedge)",
                    c.max_attempts
                ),
            ));
        }
        if !(0.0..=1.0).contains(&c.max_extra_load) {
            return Err(crate::error::config_error(
                "max_extra_load",
                format!("{} is not within 0.0..=1.0", c.max_extra_load),
            ));
        }
        if !(c.min_hedges_per_sec.is_finite() && c.min_hedges_per_sec >= 0.0) {
            return Err(crate::error::config_error(
                "min_hedges_per_sec",
                format!("{} must be finite and not negative", c.min_hedges_per_sec),
            ));
        }
        if c.budget_window.is_zero() {
            return Err(crate::error::config_error(
                "budget_window",
                "must be greater than 0",
            ));
        }
        if c.latency_window.is_zero() {
            return Err(crate::error::config_error(
                "latency_window",
                "must be greater than 0",
            ));
        }
        if c.min_samples == 0 {
            return Err(crate::error::config_error(
                "min_samples",
                "must be at least 1",
            ));
        }
        Ok(c)
    }
}
