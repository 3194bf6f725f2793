//! One breaker per key (upstream host, route, ...), with a bounded number of
//! keys.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::breaker::{Breaker, Permit};
use crate::classify::{Classify, DefaultClassifier};
use crate::config::Config;
use crate::error::{ConfigError, Rejected};
use crate::future::ResponseFuture;

/// A bounded set of breakers, one per key, created on first use from one
/// [`Config`].
///
/// Breaker `k` is named `"{config name}/{k}"` (the `breaker` label of its
/// metrics). Once `max_keys` breakers exist, a new key first evicts the least
/// recently used breaker that is **closed and idle** (no call in flight, no
/// handle held outside the set), counted in
/// [`EVICTED`](crate::metrics::EVICTED) and [`evictions`](Self::evictions);
/// open, half-open and forced breakers are never evicted, so a failing key
/// keeps its state. Only when none can be evicted do further keys share one
/// overflow breaker named `"{config name}/overflow"` (created on first use),
/// so a flood of distinct keys cannot grow memory (or the metrics'
/// cardinality) without bound. Eviction scans the dynamic keys (O(`max_keys`)
/// under the write lock), and only when the set is full and a new key
/// arrives.
///
/// Keys known up front ([`with_keys`](Self::with_keys), for example the
/// configured upstreams) are looked up without any lock; keys created on first
/// use go through a read-write lock.
pub struct KeyedBreakers<K> {
    config: Config,
    max_keys: usize,
    fixed: HashMap<K, Breaker>,
    map: RwLock<HashMap<K, Entry>>,
    overflow: OnceLock<Breaker>,
    /// Logical time of the last use of each dynamic key (a counter, not a
    /// clock: only the order matters for least-recently-used eviction).
    tick: AtomicU64,
    evictions: AtomicU64,
    evicted: metrics::Counter,
}

/// A dynamic key's breaker and when it was last used.
#[derive(Debug)]
struct Entry {
    breaker: Breaker,
    used: AtomicU64,
}

impl<K: fmt::Debug> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("KeyedBreakers")
            .field("name", &self.config.name())
            .field("max_keys", &self.max_keys)
            .field("fixed", &self.fixed)
            .field("breakers", &*map)
            .finish()
    }
}

impl<K> KeyedBreakers<K>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// At most `max_keys` breakers configured by `config`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_keys` when it is zero.
    pub fn new(config: Config, max_keys: usize) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(crate::error::config_error("max_keys", "must be at least 1"));
        }
        Ok(Self {
            overflow: OnceLock::new(),
            evicted: metrics::counter!(crate::metrics::EVICTED, "breaker" => config.name().to_owned()),
            config,
            max_keys,
            fixed: HashMap::new(),
            map: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// Creates the breakers of `keys` now (they count towards `max_keys`).
    /// Their lookups take no lock, and their metrics exist before the first
    /// call.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_keys` when there are more keys than
    /// that.
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = K>) -> Result<Self, ConfigError> {
        for key in keys {
            if self.fixed.contains_key(&key) {
                continue;
            }
            if self.fixed.len() >= self.max_keys {
                return Err(crate::error::config_error(
                    "max_keys",
                    format!("is {}, fewer than the keys given up front", self.max_keys),
                ));
            }
            let breaker = self.new_breaker(&key);
            self.fixed.insert(key, breaker);
        }
        Ok(self)
    }

    /// Uses `breaker` (an existing breaker, with its state) for `key`, like a
    /// key given to [`with_keys`](Self::with_keys). For a hot reload that
    /// keeps the breakers whose configuration did not change; the breaker
    /// keeps its own configuration and name.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_keys` when `max_keys` keys are already
    /// given up front.
    pub fn with_breaker(mut self, key: K, breaker: Breaker) -> Result<Self, ConfigError> {
        if !self.fixed.contains_key(&key) && self.fixed.len() >= self.max_keys {
            return Err(crate::error::config_error(
                "max_keys",
                format!("is {}, fewer than the keys given up front", self.max_keys),
            ));
        }
        self.fixed.insert(key, breaker);
        Ok(self)
    }

    /// The breakers of the keys given up front.
    pub fn fixed(&self) -> impl Iterator<Item = (&K, &Breaker)> {
        self.fixed.iter()
    }

    fn new_breaker(&self, key: &K) -> Breaker {
        let name = format!("{}/{}", self.config.name(), key);
        Breaker::new(self.config.clone().with_name(name))
    }

    /// The breaker of `key`, created if needed (or the overflow breaker when
    /// `max_keys` breakers already exist).
    pub fn get(&self, key: &K) -> Breaker {
        if let Some(breaker) = self.fixed.get(key) {
            return breaker.clone();
        }
        if let Some(entry) = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            entry.used.store(self.now(), Ordering::Relaxed);
            return entry.breaker.clone();
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get(key) {
            entry.used.store(self.now(), Ordering::Relaxed);
            return entry.breaker.clone();
        }
        if self.fixed.len() + map.len() >= self.max_keys && !self.evict_one(&mut map) {
            return self.overflow().clone();
        }
        let breaker = self.new_breaker(key);
        map.insert(
            key.clone(),
            Entry {
                breaker: breaker.clone(),
                used: AtomicU64::new(self.now()),
            },
        );
        breaker
    }

    fn now(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes the least recently used closed, idle breaker; `false` if
    /// there is none. Runs under the write lock, so no lookup can hand out
    /// the breaker while it is checked and removed.
    #[cold]
    fn evict_one(&self, map: &mut HashMap<K, Entry>) -> bool {
        let victim = map
            .iter()
            .filter(|(_, entry)| entry.breaker.is_idle_and_closed())
            .min_by_key(|(_, entry)| entry.used.load(Ordering::Relaxed))
            .map(|(key, _)| key.clone());
        let Some(key) = victim else {
            return false;
        };
        map.remove(&key);
        self.evictions.fetch_add(1, Ordering::Relaxed);
        self.evicted.increment(1);
        tracing::debug!(
            target: "palisade_breaker",
            breaker = %self.config.name(), key = %key,
            "evicted an idle closed breaker to make room for a new key"
        );
        true
    }

    /// Breakers evicted so far to make room for new keys.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn acquire(&self, key: &K) -> Result<Permit, Rejected> {
        if let Some(breaker) = self.fixed.get(key) {
            return breaker.try_acquire();
        }
        // Dynamic keys: clone the handle so no map lock is held while the
        // breaker may transition (and run its `on_transition` callback).
        self.get(key).try_acquire()
    }

    /// The breaker of `key` if it exists.
    pub fn get_existing(&self, key: &K) -> Option<Breaker> {
        if let Some(breaker) = self.fixed.get(key) {
            return Some(breaker.clone());
        }
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|entry| entry.breaker.clone())
    }

    /// The breaker shared by keys beyond `max_keys`.
    pub fn overflow(&self) -> &Breaker {
        self.overflow.get_or_init(|| {
            let name = format!("{}/overflow", self.config.name());
            Breaker::new(self.config.clone().with_name(name))
        })
    }

    /// Number of per-key breakers.
    pub fn len(&self) -> usize {
        self.fixed.len()
            + self
                .map
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }

    /// Whether no per-key breaker exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wraps services in a [`KeyedCircuitBreaker`]: each request goes through the
/// breaker of the key `key_fn` extracts from it.
///
/// All services built by clones of this layer share the same
/// [`KeyedBreakers`].
pub struct KeyedCircuitBreakerLayer<K, F, C = DefaultClassifier> {
    breakers: Arc<KeyedBreakers<K>>,
    key_fn: F,
    classifier: C,
}

impl<K, F> KeyedCircuitBreakerLayer<K, F>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// A layer keyed by `key_fn(&request)`, at most `max_keys` breakers.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_keys` when it is zero.
    pub fn new(config: Config, max_keys: usize, key_fn: F) -> Result<Self, ConfigError> {
        Ok(Self {
            breakers: Arc::new(KeyedBreakers::new(config, max_keys)?),
            key_fn,
            classifier: DefaultClassifier,
        })
    }

    /// A layer over existing breakers (for example built with
    /// [`KeyedBreakers::with_keys`]).
    pub fn from_breakers(breakers: Arc<KeyedBreakers<K>>, key_fn: F) -> Self {
        Self {
            breakers,
            key_fn,
            classifier: DefaultClassifier,
        }
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// Uses another classifier.
    pub fn classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, F, C2> {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers,
            key_fn: self.key_fn,
            classifier,
        }
    }

    /// The breakers (handles to read and control each key's state).
    pub fn breakers(&self) -> &Arc<KeyedBreakers<K>> {
        &self.breakers
    }
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            breakers: self.breakers.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K: fmt::Debug, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            breakers: self.breakers.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service with one breaker per request key; built by
/// [`KeyedCircuitBreakerLayer`].
///
/// Always fails fast ([`ReadyMode::FailFast`](crate::ReadyMode::FailFast)):
/// readiness cannot depend on a key that only the request carries.
pub struct KeyedCircuitBreaker<S, K, F, C> {
    inner: S,
    breakers: Arc<KeyedBreakers<K>>,
    key_fn: F,
    classifier: C,
}

impl<S, K, F, C> KeyedCircuitBreaker<S, K, F, C> {
    /// The breakers.
    pub fn breakers(&self) -> &Arc<KeyedBreakers<K>> {
        &self.breakers
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breakers: self.breakers.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, F, C: fmt::Debug> fmt::Debug
    for KeyedCircuitBreaker<S, K, F, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Display,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breakers.acquire(&(self.key_fn)(&req)) {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected, self.classifier.clone()),
        }
    }
}
