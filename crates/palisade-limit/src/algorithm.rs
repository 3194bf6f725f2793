//! Limit algorithms: how the limit moves with what completed calls show.
//!
//! A [`Limiter`](crate::Limiter) feeds every completed call to its
//! [`Algorithm`] as a [`Sample`] (latency, the in-flight count when the call
//! was admitted, whether it signalled overload) and adopts the limit the
//! algorithm returns, clamped to the algorithm's [`Bounds`]. The algorithm is
//! called under the limiter's lock, one sample at a time, so it is plain
//! sequential code: no atomics, no clock of its own (a sample carries the
//! time it ended).
//!
//! | algorithm | signal | use when |
//! |---|---|---|
//! | [`Gradient2`] | short-term vs long-term latency | no periodic re-measurement wanted; a longer tail than the default's |
//! | [`Vegas`] | estimated queue (latency over the no-load latency) | latency is stable when unloaded and you want a small standing queue |
//! | [`Aimd`] | drops (timeouts, 503/429) and a latency ceiling | the upstream says when it is overloaded, or you know a latency that must not be exceeded |
//! | [`Fixed`] | none | you know the capacity and want the queue, classes or deadlines around a static limit |
//! | [`ProbingGradient`] (default) | latency over a minimum re-measured every minute | the general default: holds capacity with a short tail and follows capacity steps and a drifting no-load latency |
//!
//! Write your own by implementing [`Algorithm`].

use std::fmt;
use std::time::Duration;

use palisade_core::ConfigError;

/// The three bounds setters every algorithm's builder has (over its
/// `bounds: Bounds` field), written once.
macro_rules! bounds_setters {
    () => {
        /// The lowest limit (default 1, at least 1).
        pub fn min_limit(mut self, min: usize) -> Self {
            self.bounds.min = min;
            self
        }

        /// The highest limit (default 1000).
        pub fn max_limit(mut self, max: usize) -> Self {
            self.bounds.max = max;
            self
        }

        /// The limit before the first sample (default 20).
        pub fn initial_limit(mut self, initial: usize) -> Self {
            self.bounds.initial = initial;
            self
        }
    };
}

mod aimd;
mod fixed;
mod gradient2;
mod knee;
mod probing;
#[cfg(test)]
mod tests;
mod vegas;

pub use aimd::{Aimd, AimdBuilder};
pub use fixed::Fixed;
pub use gradient2::{Gradient2, Gradient2Builder};
pub use probing::{ProbingGradient, ProbingGradientBuilder};
pub use vegas::{Vegas, VegasBuilder};

/// One completed call, as an [`Algorithm`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// From admission to the call's end (its response body's end, for the
    /// HTTP layer).
    pub rtt: Duration,
    /// Calls in flight when this one was admitted, itself included.
    pub in_flight: usize,
    /// Whether the call signalled overload: a timeout, a 503 or 429 from
    /// below, a gRPC `RESOURCE_EXHAUSTED` or `UNAVAILABLE` (what the
    /// classifier calls a failure).
    pub dropped: bool,
    /// Whether some call found the limit full (refused, or queued, for lack
    /// of a slot or of its class's share) since the previous sample: the
    /// limit, not the caller, bounded the concurrency.
    pub saturated: bool,
    /// When the call ended, in nanoseconds on the limiter's clock (which
    /// `tokio::time::pause` controls in tests). Non-decreasing from one
    /// sample to the next.
    pub at_nanos: u64,
}

/// The range a limit moves in, and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The limit never goes below this (at least 1).
    pub min: usize,
    /// The limit never goes above this.
    pub max: usize,
    /// The limit before the first sample.
    pub initial: usize,
}

impl Bounds {
    /// Every algorithm's default range: 1 to 1000, starting at 20.
    pub const DEFAULT: Bounds = Bounds {
        min: 1,
        max: 1000,
        initial: 20,
    };

    /// Checks `1 <= min <= initial <= max`, naming the field that breaks it.
    pub fn validate(&self, component: &'static str) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new(
                component,
                "min_limit",
                "must be at least 1",
            ));
        }
        if self.max < self.min {
            return Err(ConfigError::new(
                component,
                "max_limit",
                format!("must be at least min_limit ({})", self.min),
            ));
        }
        if self.initial < self.min || self.initial > self.max {
            return Err(ConfigError::new(
                component,
                "initial_limit",
                format!("must be within [{}, {}]", self.min, self.max),
            ));
        }
        Ok(())
    }

    /// `limit` clamped to `[min, max]`.
    #[inline]
    pub fn clamp(&self, limit: usize) -> usize {
        limit.clamp(self.min, self.max)
    }
}

/// How a concurrency limit moves with what completed calls show.
///
/// The limiter calls [`update`](Algorithm::update) once per completed call
/// (calls classified `Ignored` and cancelled calls are not samples), with
/// its lock held, and clamps the result to [`bounds`](Algorithm::bounds).
pub trait Algorithm: fmt::Debug + Send + 'static {
    /// The name in logs and metrics, e.g. `"gradient2"`.
    fn name(&self) -> &'static str;

    /// Where the limit starts and the range it stays in.
    fn bounds(&self) -> Bounds;

    /// Learns from `sample`, given the current `limit`; returns the new
    /// limit (the limiter clamps it to [`bounds`](Algorithm::bounds)).
    fn update(&mut self, sample: &Sample, limit: usize) -> usize;

    /// Whether the algorithm is re-measuring its no-load latency with a
    /// lowered limit. While it is, the limiter holds calls over the limit in
    /// its wait queue (up to the queue's maximum wait) instead of rejecting
    /// them, so a re-measurement costs a short delay, never a burst of 503s.
    fn probing(&self) -> bool {
        false
    }
}

impl Algorithm for Box<dyn Algorithm> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn bounds(&self) -> Bounds {
        (**self).bounds()
    }

    fn update(&mut self, sample: &Sample, limit: usize) -> usize {
        (**self).update(sample, limit)
    }

    fn probing(&self) -> bool {
        (**self).probing()
    }
}
