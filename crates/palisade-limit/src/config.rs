//! Building a [`Limiter`]: every knob, its default, and its validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::ConfigError;

use crate::Limiter;
use crate::algorithm::{Algorithm, ProbingGradient};

const COMPONENT: &str = "limit";

/// What a call that finds the limit full does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refuse it at once with [`Overloaded`](crate::Overloaded)
    /// ([`Reason::LimitReached`](crate::Reason::LimitReached)). The default:
    /// a refusal costs the caller microseconds, and its retry goes
    /// elsewhere.
    #[default]
    Reject,
    /// Wait in a bounded queue for a slot, up to `max_wait`, with CoDel
    /// shedding and newest-first service while the queue stands.
    Queue,
}

/// Builds a [`Limiter`]; see each method for its default.
pub struct LimiterBuilder {
    pub(crate) name: Arc<str>,
    pub(crate) algorithm: Box<dyn Algorithm>,
    pub(crate) mode: Mode,
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Duration,
    pub(crate) target_delay: Duration,
    pub(crate) interval: Duration,
    pub(crate) classes: Vec<(&'static str, f64)>,
    pub(crate) idle_after: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) log_change: f64,
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm.name())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Default for LimiterBuilder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            algorithm: Box::new(ProbingGradient::default()),
            mode: Mode::Reject,
            max_queue: 1024,
            max_wait: Duration::from_millis(100),
            target_delay: Duration::from_millis(5),
            interval: Duration::from_millis(100),
            classes: Vec::new(),
            idle_after: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            log_change: 0.1,
        }
    }
}

impl LimiterBuilder {
    /// The name in metrics (`limiter` label), logs and errors. Default
    /// `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How the limit moves. Default [`ProbingGradient::default()`].
    pub fn algorithm(mut self, algorithm: impl Algorithm) -> Self {
        self.algorithm = Box::new(algorithm);
        self
    }

    /// What a call that finds the limit full does. Default
    /// [`Mode::Reject`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The most calls the queue holds; a call that finds it full is refused.
    /// Default 1024.
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = max;
        self
    }

    /// The longest a call waits in the queue. Default 100 ms.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// CoDel's target queue delay: a queue whose shortest wait stays above
    /// it for a whole [`interval`](Self::interval) is standing, and then
    /// serves newest-first and sheds calls that waited twice the target.
    /// Default 5 ms (folly's).
    pub fn target_delay(mut self, target: Duration) -> Self {
        self.target_delay = target;
        self
    }

    /// CoDel's interval. Default 100 ms (folly's).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Partitions the limit into classes, highest priority first, each with
    /// a guaranteed share of the limit (`0.0..=1.0`, summing to at most 1);
    /// a request's class comes from the layer's request policy. Default: no
    /// classes.
    pub fn classes(mut self, classes: &[(&'static str, f64)]) -> Self {
        self.classes = classes.to_vec();
        self
    }

    /// How long a class may send nothing before its share is lent out in
    /// full. Default 1 s.
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle_after = idle;
        self
    }

    /// The retry hint of a refusal (HTTP `Retry-After`, rounded up to whole
    /// seconds, never 0; gRPC `grpc-retry-pushback-ms`). Default 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// How far (a fraction of the last logged limit) the limit must move
    /// before a `tracing` event reports it. Default 0.1 (10%).
    pub fn log_change(mut self, fraction: f64) -> Self {
        self.log_change = fraction;
        self
    }

    /// The limiter, or the first invalid field.
    pub fn build(self) -> Result<Limiter, ConfigError> {
        self.algorithm.bounds().validate(COMPONENT)?;
        if self.mode == Mode::Queue && self.max_queue == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "max_queue",
                "must be at least 1 in queue mode",
            ));
        }
        if self.max_wait.is_zero() {
            return Err(ConfigError::new(COMPONENT, "max_wait", "must be above 0"));
        }
        if self.target_delay.is_zero() || self.target_delay > self.max_wait {
            return Err(ConfigError::new(
                COMPONENT,
                "target_delay",
                "must be above 0 and at most max_wait",
            ));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new(COMPONENT, "interval", "must be above 0"));
        }
        let mut total = 0.0;
        for (i, &(name, share)) in self.classes.iter().enumerate() {
            if !(0.0..=1.0).contains(&share) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "classes",
                    format!("share of `{name}` is {share}, not within 0.0..=1.0"),
                ));
            }
            if self.classes[..i].iter().any(|(n, _)| *n == name) {
                return Err(ConfigError::new(
                    COMPONENT,
                    "classes",
                    format!("`{name}` is named twice"),
                ));
            }
            total += share;
        }
        if total > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                COMPONENT,
                "classes",
                format!("shares sum to {total}, more than 1"),
            ));
        }
        if self.idle_after.is_zero() {
            return Err(ConfigError::new(COMPONENT, "idle_after", "must be above 0"));
        }
        if !(self.log_change.is_finite() && self.log_change >= 0.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "log_change",
                "must be a finite fraction, 0 or more",
            ));
        }
        Ok(Limiter::from_builder(self))
    }
}
