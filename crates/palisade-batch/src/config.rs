//! The batcher's settings and their builder.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::dedup::{Dedup, KeyDedup};
use crate::error::ConfigError;
use crate::layer::BatchLayer;

/// Default [`BatchLayerBuilder::max_items`].
pub const DEFAULT_MAX_ITEMS: usize = 64;
/// Default [`BatchLayerBuilder::max_latency`].
pub const DEFAULT_MAX_LATENCY: Duration = Duration::from_millis(1);
/// Default [`BatchLayerBuilder::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Default [`BatchLayerBuilder::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Deepest [`BatchLayerBuilder::bisect`] allowed: 2^16 halves is far past any
/// sensible batch.
pub const MAX_BISECT_DEPTH: u32 = 16;

/// When a batch goes out, besides being full (see `docs/batching.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flush {
    /// Whenever fewer than `max_in_flight` batches are in flight and the
    /// inner service is ready, everything pending goes out at once (up to
    /// the size and weight limits). Under light load an item leaves as soon
    /// as it arrives, so batching adds no latency; under heavy load items
    /// pile up while batches are in flight and go out together (group
    /// commit). `max_latency` is not used.
    #[default]
    Opportunistic,
    /// A batch goes out when it is full or when its oldest item has waited
    /// `max_latency`, whichever comes first (the classic batcher). Fuller
    /// batches at light load, at the price of up to `max_latency` per item.
    Timer,
}

pub(crate) type WeightFn<Req> = Arc<dyn Fn(&Req) -> u64 + Send + Sync>;
/// `Req::clone`, captured where `Req: Clone` is known.
pub(crate) type CloneFn<Req> = fn(&Req) -> Req;

/// The validated settings every part of one batcher reads.
pub(crate) struct Settings<Req, Resp> {
    pub(crate) name: Arc<str>,
    pub(crate) max_items: usize,
    pub(crate) max_weight: Option<u64>,
    pub(crate) weight: Option<WeightFn<Req>>,
    pub(crate) max_latency: Duration,
    pub(crate) flush: Flush,
    pub(crate) max_in_flight: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) dedup: Option<Arc<dyn Dedup<Req, Resp>>>,
    pub(crate) bisect_depth: u32,
    /// `Req::clone`, set by [`BatchLayerBuilder::bisect`], the one place
    /// that may require `Req: Clone`.
    pub(crate) clone_req: Option<CloneFn<Req>>,
}

impl<Req, Resp> Settings<Req, Resp> {
    pub(crate) fn weight_of(&self, req: &Req) -> u64 {
        self.weight.as_ref().map_or(1, |w| w(req))
    }
}

impl<Req, Resp> fmt::Debug for Settings<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("max_items", &self.max_items)
            .field("max_weight", &self.max_weight)
            .field("max_latency", &self.max_latency)
            .field("flush", &self.flush)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue_capacity", &self.queue_capacity)
            .field("dedup", &self.dedup.is_some())
            .field("bisect_depth", &self.bisect_depth)
            .finish()
    }
}

/// Builds a [`BatchLayer`]; every knob has a default (see
/// `docs/batching.md`). [`BatchLayerBuilder::build`] checks the values and
/// names the first bad one.
pub struct BatchLayerBuilder<Req, Resp> {
    name: String,
    max_items: usize,
    max_weight: Option<(u64, WeightFn<Req>)>,
    max_latency: Duration,
    flush: Flush,
    max_in_flight: usize,
    queue_capacity: usize,
    dedup: Option<Arc<dyn Dedup<Req, Resp>>>,
    bisect: Option<(u32, CloneFn<Req>)>,
}

impl<Req, Resp> Default for BatchLayerBuilder<Req, Resp> {
    fn default() -> Self {
        Self {
            name: "batch".to_owned(),
            max_items: DEFAULT_MAX_ITEMS,
            max_weight: None,
            max_latency: DEFAULT_MAX_LATENCY,
            flush: Flush::Opportunistic,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            dedup: None,
            bisect: None,
        }
    }
}

impl<Req, Resp> fmt::Debug for BatchLayerBuilder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayerBuilder")
            .field("name", &self.name)
            .field("max_items", &self.max_items)
            .field("max_weight", &self.max_weight.as_ref().map(|(w, _)| *w))
            .field("max_latency", &self.max_latency)
            .field("flush", &self.flush)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue_capacity", &self.queue_capacity)
            .field("dedup", &self.dedup.is_some())
            .field("bisect", &self.bisect.as_ref().map(|(d, _)| *d))
            .finish()
    }
}

impl<Req, Resp> BatchLayerBuilder<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The batcher's name: the `batcher` label of its metrics and a field of
    /// its log events (default `"batch"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Most items (callers) in one batch (default [`DEFAULT_MAX_ITEMS`]).
    pub fn max_items(mut self, n: usize) -> Self {
        self.max_items = n;
        self
    }

    /// Most total weight in one batch, each item weighing `weight(&req)`
    /// (default: no weight limit). An item heavier than `max` alone goes out
    /// in a batch of its own rather than never.
    pub fn max_weight<F>(mut self, max: u64, weight: F) -> Self
    where
        F: Fn(&Req) -> u64 + Send + Sync + 'static,
    {
        self.max_weight = Some((max, Arc::new(weight)));
        self
    }

    /// In [`Flush::Timer`] mode, the longest an item waits, measured from the
    /// first item of its batch, before the batch goes out even if not full
    /// (default [`DEFAULT_MAX_LATENCY`]). Not used in
    /// [`Flush::Opportunistic`] mode.
    pub fn max_latency(mut self, latency: Duration) -> Self {
        self.max_latency = latency;
        self
    }

    /// When a batch that is not full goes out (default
    /// [`Flush::Opportunistic`]).
    pub fn flush(mut self, flush: Flush) -> Self {
        self.flush = flush;
        self
    }

    /// Most batches the inner service handles at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT`]). Items wait in the queue while this many
    /// are in flight.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Most items waiting to be sent (default [`DEFAULT_QUEUE_CAPACITY`]).
    /// When the queue is full, `poll_ready` returns `Pending` until an item
    /// leaves it.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// De-duplication (DataLoader mode): items of one batch with equal keys
    /// are sent once, and the one result is cloned to every caller with that
    /// key. `max_items` still counts callers.
    pub fn dedup<F, K>(mut self, key: F) -> Self
    where
        F: Fn(&Req) -> K + Send + Sync + 'static,
        K: Hash + Eq + Send + 'static,
        Resp: Clone,
    {
        self.dedup = Some(Arc::new(KeyDedup::new(key)));
        self
    }

    /// Bisection: when the inner service fails a whole batch (an error or a
    /// panic), retry it as two halves, recursively, at most `max_depth`
    /// times deep, so that one poison item fails alone and its neighbours
    /// succeed. Needs `Req: Clone` (each batch is copied before it is sent);
    /// `max_depth` in `1..=16`, `ceil(log2(max_items))` isolates any single
    /// item.
    pub fn bisect(mut self, max_depth: u32) -> Self
    where
        Req: Clone,
    {
        self.bisect = Some((max_depth, Req::clone));
        self
    }

    /// Checks the values and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field: `max_items`,
    /// `max_weight`, `max_latency`, `max_in_flight` or `queue_capacity` of
    /// zero, or `bisect` outside `1..=16`.
    pub fn build(self) -> Result<BatchLayer<Req, Resp>, ConfigError> {
        if self.max_items == 0 {
            return Err(crate::error::config_error(
                "max_items",
                "must be at least 1",
            ));
        }
        if let Some((0, _)) = self.max_weight {
            return Err(crate::error::config_error(
                "max_weight",
                "must be at least 1",
            ));
        }
        if self.max_latency.is_zero() {
            return Err(crate::error::config_error(
                "max_latency",
                "must be positive (Flush::Opportunistic sends without waiting)",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(crate::error::config_error(
                "max_in_flight",
                "must be at least 1",
            ));
        }
        if self.queue_capacity == 0 {
            return Err(crate::error::config_error(
                "queue_capacity",
                "must be at least 1",
            ));
        }
        if self.queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(crate::error::config_error("queue_capacity", "is too large"));
        }
        if let Some((depth, _)) = self.bisect
            && !(1..=MAX_BISECT_DEPTH).contains(&depth)
        {
            return Err(crate::error::config_error(
                "bisect",
                "depth must be in 1..=16",
            ));
        }
        if self.name.is_empty() {
            return Err(crate::error::config_error("name", "must not be empty"));
        }
        let (max_weight, weight) = match self.max_weight {
            Some((max, f)) => (Some(max), Some(f)),
            None => (None, None),
        };
        Ok(BatchLayer::from_settings(Settings {
            name: Arc::from(self.name),
            max_items: self.max_items,
            max_weight,
            weight,
            max_latency: self.max_latency,
            flush: self.flush,
            max_in_flight: self.max_in_flight,
            queue_capacity: self.queue_capacity,
            dedup: self.dedup,
            bisect_depth: self.bisect.map_or(0, |(d, _)| d),
            clone_req: self.bisect.map(|(_, f)| f),
        }))
    }
}
