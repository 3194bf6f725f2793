//! The pool's settings and their builder.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower_service::Service;

use crate::error::ConfigError;
use crate::factory::FnFactory;
use crate::service::Pool;

/// Default [`PoolBuilder::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default first restart delay of [`PoolBuilder::restart_backoff`].
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Default longest restart delay of [`PoolBuilder::restart_backoff`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Default [`PoolBuilder::max_factory_failures`].
pub const DEFAULT_MAX_FACTORY_FAILURES: u32 = 8;

/// The machine's cores as the standard library sees them (1 if unknown):
/// the default worker count of a [`Pool`] and thread count of a
/// [`CpuPool`](crate::CpuPool).
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

pub(crate) type KeyFn<Req> = Arc<dyn Fn(&Req) -> Option<u64> + Send + Sync>;

/// The validated settings every part of one pool reads.
pub(crate) struct Settings<Req> {
    pub(crate) name: Arc<str>,
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_factory_failures: u32,
    pub(crate) replace_on_panic: bool,
    pub(crate) key: Option<KeyFn<Req>>,
}

impl<Req> Settings<Req> {
    /// The worker a keyed job must run on, if it has a key.
    pub(crate) fn worker_for(&self, req: &Req) -> Option<usize> {
        let key = self.key.as_ref()?(req)?;
        // The workers count is at most a few thousand: the modulo of a
        // 64-bit hash is uniform enough.
        Some((key % self.workers as u64) as usize)
    }
}

impl<Req> fmt::Debug for Settings<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_factory_failures", &self.max_factory_failures)
            .field("replace_on_panic", &self.replace_on_panic)
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

/// Builds a [`Pool`]; every knob has a default (see `docs/worker-pool.md`).
/// The `build` methods check the values and name the first bad one.
pub struct PoolBuilder<Req> {
    name: String,
    workers: Option<usize>,
    queue_capacity: usize,
    backoff: (Duration, Duration),
    max_factory_failures: u32,
    replace_on_panic: bool,
    key: Option<KeyFn<Req>>,
}

impl<Req> Default for PoolBuilder<Req> {
    fn default() -> Self {
        Self {
            name: "pool".to_owned(),
            workers: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: (DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX),
            max_factory_failures: DEFAULT_MAX_FACTORY_FAILURES,
            replace_on_panic: true,
            key: None,
        }
    }
}

impl<Req> fmt::Debug for PoolBuilder<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("max_factory_failures", &self.max_factory_failures)
            .field("replace_on_panic", &self.replace_on_panic)
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl<Req: Send + 'static> PoolBuilder<Req> {
    /// The pool's name: the `pool` label of its metrics, a field of its log
    /// events and part of its task names (default `"pool"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Number of workers, each with its own inner service (default
    /// [`default_parallelism`]). Size it to what the inner resource allows
    /// (connections, licences), not to the request rate.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Most jobs waiting for a worker (default [`DEFAULT_QUEUE_CAPACITY`]).
    /// When the queue is full, `poll_ready` returns `Pending` until a job
    /// leaves it. Running jobs do not count.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Delay before re-making a worker's service after it died or the
    /// factory failed: `initial`, doubling on each failure in a row, at most
    /// `max` (defaults [`DEFAULT_BACKOFF_INITIAL`], [`DEFAULT_BACKOFF_MAX`]).
    /// A worker that completes a job starts over at no delay.
    pub fn restart_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// After this many factory failures in a row (counted across all
    /// workers), the pool closes with
    /// [`Closed::FactoryFailed`](crate::Closed::FactoryFailed): every queued
    /// job is answered with it and new calls are refused, instead of
    /// waiting for a worker that cannot be made (default
    /// [`DEFAULT_MAX_FACTORY_FAILURES`]).
    pub fn max_factory_failures(mut self, n: u32) -> Self {
        self.max_factory_failures = n;
        self
    }

    /// Whether a worker whose call panicked gets a fresh service from the
    /// factory (default `true`: a panic may leave the service's state
    /// broken). With `false` it keeps serving with the same one.
    pub fn replace_on_panic(mut self, replace: bool) -> Self {
        self.replace_on_panic = replace;
        self
    }

    /// Keyed affinity: a job whose `key` is `Some(k)` always runs on the
    /// worker that `k` hashes to, so jobs with the same key run one at a
    /// time, in submission order, on one inner service (a session's state,
    /// a connection's ordering). Jobs with `None` go to any idle worker.
    /// A keyed job can wait behind the other jobs of its worker: that is the
    /// price of the order.
    pub fn affinity<F, K>(mut self, key: F) -> Self
    where
        F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
        K: Hash,
    {
        let hasher = foldhash::fast::FixedState::with_seed(0x70_6f_6f_6c);
        self.key = Some(Arc::new(move |req| key(req).map(|k| hasher.hash_one(k))));
        self
    }

    fn settings(self) -> Result<Settings<Req>, ConfigError> {
        let workers = self.workers.unwrap_or_else(default_parallelism);
        if workers == 0 {
            return Err(crate::error::config_error("workers", "must be at least 1"));
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
        let (initial, max) = self.backoff;
        if initial.is_zero() {
            return Err(crate::error::config_error(
                "restart_backoff",
                "initial must be positive",
            ));
        }
        if max < initial {
            return Err(crate::error::config_error(
                "restart_backoff",
                "max must be at least initial",
            ));
        }
        if self.max_factory_failures == 0 {
            return Err(crate::error::config_error(
                "max_factory_failures",
                "must be at least 1",
            ));
        }
        if self.name.is_empty() {
            return Err(crate::error::config_error("name", "must not be empty"));
        }
        Ok(Settings {
            name: Arc::from(self.name),
            workers,
            queue_capacity: self.queue_capacity,
            backoff_initial: initial,
            backoff_max: max,
            max_factory_failures: self.max_factory_failures,
            replace_on_panic: self.replace_on_panic,
            key: self.key,
        })
    }

    /// Checks the values and starts the workers; each makes its inner
    /// service by calling `factory` with its worker index (`0..workers`).
    /// Any `tower::MakeService` with target `usize` is such a factory;
    /// `tower::service_fn(|i: usize| async move { … })` makes one from an
    /// async, fallible closure.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the workers are spawned tasks).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field: `workers`,
    /// `queue_capacity` or `max_factory_failures` of zero, a zero or
    /// inverted `restart_backoff`, an empty `name`.
    pub fn build<M, S>(self, factory: M) -> Result<Pool<Req, S::Response>, ConfigError>
    where
        M: Service<usize, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send + 'static,
        S: Service<Req> + Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let settings = self.settings()?;
        Ok(Pool::start(settings, factory))
    }

    /// [`PoolBuilder::build`] with a plain closure making each worker's
    /// service from its index (it cannot fail).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn build_fn<F, S>(self, make: F) -> Result<Pool<Req, S::Response>, ConfigError>
    where
        F: FnMut(usize) -> S + Send + 'static,
        S: Service<Req> + Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.build(FnFactory(make))
    }
}
