//! Stage and pipeline settings, their defaults and their checks.

use crate::error::ConfigError;

/// Default [`StageConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 1;
/// Default [`StageConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Default [`PipelineBuilder::output_capacity`](crate::PipelineBuilder::output_capacity).
pub const DEFAULT_OUTPUT_CAPACITY: usize = 64;
/// Default reorder window, as a multiple of the concurrency: room for one
/// slow item plus a full round of its successors.
pub const DEFAULT_WINDOW_FACTOR: usize = 2;

/// In which order a stage hands its results on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// In the order the items reached the stage. A slow item holds back the
    /// ones after it, up to the reorder window.
    #[default]
    Ordered,
    /// As they complete: no head-of-line blocking.
    Unordered,
}

/// What the pipeline does when a stage fails an item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// The error comes out in the item's place and the pipeline goes on.
    #[default]
    Continue,
    /// The error comes out, then the output ends and the pipeline is cut:
    /// the items behind it are dropped and counted as cut.
    Stop,
}

/// One stage's settings. Every knob has a default; see `docs/pipeline.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageConfig {
    pub(crate) name: String,
    pub(crate) concurrency: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) order: Order,
    pub(crate) reorder_window: Option<usize>,
}

impl StageConfig {
    /// A stage named `name` (metrics label, task name, error messages):
    /// concurrency 1, ordered, a queue of 64.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: DEFAULT_CONCURRENCY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            order: Order::Ordered,
            reorder_window: None,
        }
    }

    /// Calls of the stage's service in flight at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Items the queue in front of the stage holds before its producer waits
    /// (default 64).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Output order (default [`Order::Ordered`]).
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Shorthand for `order(Order::Unordered)`.
    pub fn unordered(self) -> Self {
        self.order(Order::Unordered)
    }

    /// Items the stage holds at once: in flight, completed and waiting for
    /// an earlier item, or waiting for room downstream. At least the
    /// concurrency; default twice the concurrency. Separate from the
    /// concurrency so one slow item does not stall the stage the moment it
    /// is overtaken.
    pub fn reorder_window(mut self, n: usize) -> Self {
        self.reorder_window = Some(n);
        self
    }

    pub(crate) fn window(&self) -> usize {
        self.reorder_window
            .unwrap_or(self.concurrency.saturating_mul(DEFAULT_WINDOW_FACTOR))
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let stage = Some(self.name.as_str());
        if self.name.is_empty() {
            return Err(ConfigError::new(
                None,
                "name",
                "of a stage must not be empty",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::new(stage, "concurrency", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::new(
                stage,
                "queue_capacity",
                "must be at least 1",
            ));
        }
        if self.window() < self.concurrency {
            return Err(ConfigError::new(
                stage,
                "reorder_window",
                format!(
                    "({}) must be at least the concurrency ({})",
                    self.window(),
                    self.concurrency
                ),
            ));
        }
        Ok(())
    }
}
