//! Keyed limits with a hard cap on tracked keys.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash},
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
};

use foldhash::fast::RandomState;
use metrics::{Counter, Gauge};

use crate::{
    Clock, Decision, Quota,
    error::{InsufficientCapacity, QuotaError},
    metrics::{Counters, evicted_counter, keys_gauge},
    quota::{admit, admitted, rejected},
};

/// Default hard cap on tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The fewest keys a shard holds when the shard count is left to its
/// default: a `max_keys` below `64 × 16 × CPUs` gets fewer shards.
pub const MIN_KEYS_PER_SHARD: usize = 64;

/// Last-seen times are kept in milliseconds (a `u32`, compared with wrapping
/// arithmetic, so ages up to 49 days order correctly) and only rewritten when
/// the millisecond changed.
const NANOS_PER_MILLI: u64 = 1_000_000;

/// A GCRA state per key (client IP, API token, route ...) with bounded memory.
///
/// Keys live in a fixed number of shards, each a `RwLock<HashMap>`; a check of
/// a known key takes the shard's read lock and updates the key's TAT word with
/// compare-and-swap, so checks of different keys (and of the same key) run in
/// parallel. A new key takes the write lock once.
///
/// **Bounded memory.** At most `max_keys` keys are tracked (a hard cap, split
/// evenly across shards). When a shard is full, it first drops every key whose
/// state has fully replenished (a fresh key would behave identically, so this
/// loses nothing), and if that frees less than an eighth of the shard, it
/// evicts the least recently seen eighth. A flood of distinct keys (random
/// IPv6 addresses) therefore costs CPU, never memory beyond the cap; the price
/// is that an evicted, partially drained key starts over with a full burst.
///
/// ```
/// use palisade_ratelimit::{KeyedLimiter, Quota};
///
/// let limiter = KeyedLimiter::builder(Quota::per_second(1)?).max_keys(1_000).build()?;
/// assert!(limiter.check(&"alice").allowed());
/// assert!(!limiter.check(&"alice").allowed());
/// assert!(limiter.check(&"bob").allowed());
/// assert_eq!(limiter.len(), 2);
/// # Ok::<(), palisade_ratelimit::QuotaError>(())
/// ```
pub struct KeyedLimiter<K> {
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
    shard_cap: usize,
    len: AtomicUsize,
    quota: Quota,
    /// Index 0 is the default quota; overrides point at the others, so an
    /// entry stores two bytes instead of a quota.
    quotas: Box<[Quota]>,
    overrides: HashMap<K, u16, RandomState>,
    clock: Clock,
    name: &'static str,
    shadow: bool,
    counters: Counters,
    keys: Gauge,
    evicted: Counter,
}

#[repr(align(64))]
struct Shard<K> {
    map: RwLock<HashMap<K, Entry, RandomState>>,
}

/// 16 bytes per key (plus the key and the map's control byte).
#[derive(Debug)]
struct Entry {
    tat: AtomicU64,
    seen_ms: AtomicU32,
    limited: AtomicBool,
    quota: u16,
}

/// Builds a [`KeyedLimiter`]; see [`KeyedLimiter::builder`].
pub struct KeyedLimiterBuilder<K> {
    quota: Quota,
    max_keys: usize,
    /// `None`: sized from the CPU count and `max_keys` at build time.
    shards: Option<usize>,
    overrides: HashMap<K, Quota, RandomState>,
    clock: Option<Clock>,
    name: &'static str,
    shadow: bool,
}

impl<K: fmt::Debug> fmt::Debug for KeyedLimiterBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiterBuilder")
            .field("quota", &self.quota)
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards)
            .field("overrides", &self.overrides)
            .field("name", &self.name)
            .field("shadow", &self.shadow)
            .finish()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static> KeyedLimiterBuilder<K> {
    /// The hard cap on tracked keys (default [`DEFAULT_MAX_KEYS`]).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Number of shards, rounded up to a power of two, never more than
    /// `max_keys`. Default: 16 per CPU, at most 256, and few enough that each
    /// shard holds at least [`MIN_KEYS_PER_SHARD`] keys, so a small
    /// `max_keys` is not split into shards of one or two keys that evict
    /// while the limiter as a whole has room.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// A different quota for one key (a tier, a route, a known partner).
    pub fn with_override(mut self, key: K, quota: Quota) -> Self {
        self.overrides.insert(key, quota);
        self
    }

    /// The policy name used in metrics labels and header fields (default `"per-key"`).
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Shadow mode (default off): decide and count, but admit everything.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The clock (default [`Clock::fast`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the limiter; `max_keys` or `shards` of zero is an error.
    pub fn build(self) -> Result<KeyedLimiter<K>, QuotaError> {
        if self.max_keys == 0 {
            return Err(QuotaError::Zero { field: "max_keys" });
        }
        let requested = match self.shards {
            Some(0) => return Err(QuotaError::Zero { field: "shards" }),
            Some(shards) => shards,
            None => {
                let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
                (cpus * 16)
                    .min(256)
                    .min(self.max_keys / MIN_KEYS_PER_SHARD)
                    .max(1)
            }
        };
        // Each shard holds at least one key, and shards × shard_cap <= max_keys.
        let mut shards = requested.next_power_of_two().min(1 << 16);
        while shards > self.max_keys {
            shards /= 2;
        }
        let shard_cap = self.max_keys / shards;
        if self.overrides.len() >= usize::from(u16::MAX) {
            return Err(QuotaError::Overflow { field: "overrides" });
        }
        let mut quotas = vec![self.quota];
        let mut overrides = HashMap::with_hasher(RandomState::default());
        for (key, quota) in self.overrides {
            overrides.insert(key, quotas.len() as u16);
            quotas.push(quota);
        }
        let keys = keys_gauge(self.name);
        keys.set(0.0);
        Ok(KeyedLimiter {
            shards: (0..shards)
                .map(|_| Shard {
                    map: RwLock::new(HashMap::with_hasher(RandomState::default())),
                })
                .collect(),
            hasher: RandomState::default(),
            shard_cap,
            len: AtomicUsize::new(0),
            quota: self.quota,
            quotas: quotas.into(),
            overrides,
            clock: self.clock.unwrap_or_default(),
            name: self.name,
            shadow: self.shadow,
            counters: Counters::new(self.name),
            keys,
            evicted: evicted_counter(self.name),
        })
    }
}

// === impl KeyedLimiter ===

impl<K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static> KeyedLimiter<K> {
    /// A builder; the quota applies to every key without an override.
    pub fn builder(quota: Quota) -> KeyedLimiterBuilder<K> {
        KeyedLimiterBuilder {
            quota,
            max_keys: DEFAULT_MAX_KEYS,
            shards: None,
            overrides: HashMap::with_hasher(RandomState::default()),
            clock: None,
            name: "per-key",
            shadow: false,
        }
    }

    /// Asks for one cell for `key`.
    #[inline]
    pub fn check(&self, key: &K) -> Decision {
        self.decide(key, 1).1
    }

    /// Asks for `cost` cells for `key`; all or nothing.
    pub fn check_n(&self, key: &K, cost: u32) -> Result<Decision, InsufficientCapacity> {
        let burst = self.quota_for(key).burst;
        if cost > burst {
            return Err(InsufficientCapacity { burst });
        }
        Ok(self.decide(key, cost).1)
    }

    /// The number of keys tracked right now (never above the cap).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The effective hard cap (`max_keys` rounded down to a multiple of the shard count).
    pub fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// The default quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The quota `key` gets (its override, or the default).
    pub fn quota_for(&self, key: &K) -> Quota {
        self.quotas[usize::from(self.quota_index(key))]
    }

    fn quota_index(&self, key: &K) -> u16 {
        self.overrides.get(key).copied().unwrap_or(0)
    }

    /// The policy name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the limiter is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Drops every key whose state has fully replenished. Eviction does this
    /// on demand; call it from a timer if you want the gauge to fall when idle.
    pub fn purge_expired(&self) {
        let now = self.clock.now_nanos();
        for shard in self.shards.iter() {
            let mut map = shard.map.write().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, entry| entry.tat.load(Ordering::Relaxed) > now);
            self.len.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
        self.keys.set(self.len() as f64);
    }

    #[inline]
    fn shard(&self, key: &K) -> &Shard<K> {
        // The map re-hashes with its own seed. foldhash's fast hash is weak
        // in its high bits for small integer keys, so finish it with one
        // multiply before taking the shard index from the top bits.
        let hash = self.hasher.hash_one(key);
        let mixed = (hash ^ (hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Multiply-high maps the mixed hash uniformly onto 0..shards.
        let index = (u128::from(mixed) * self.shards.len() as u128) >> 64;
        &self.shards[index as usize]
    }

    /// Returns (the cost consumed, the decision). The caller checked `cost`
    /// against the key's burst (or passes 1).
    #[inline]
    pub(crate) fn decide(&self, key: &K, cost: u32) -> (u32, Decision) {
        let now = self.clock.now_nanos();
        let shard = self.shard(key);
        {
            let map = shard.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = map.get(key) {
                return self.decide_entry(key, entry, now, cost);
            }
        }
        let mut map = shard.map.write().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(key) {
            if map.len() >= self.shard_cap {
                self.evict(&mut map, now);
            }
            map.insert(
                key.clone(),
                Entry {
                    tat: AtomicU64::new(0),
                    seen_ms: AtomicU32::new((now / NANOS_PER_MILLI) as u32),
                    limited: AtomicBool::new(false),
                    quota: self.quota_index(key),
                },
            );
            let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
            self.keys.set(len as f64);
        }
        let entry = map
            .get(key)
            .expect("the entry was just ensured under the write lock");
        self.decide_entry(key, entry, now, cost)
    }

    #[inline]
    fn decide_entry(&self, key: &K, entry: &Entry, now: u64, cost: u32) -> (u32, Decision) {
        let now_ms = (now / NANOS_PER_MILLI) as u32;
        if entry.seen_ms.load(Ordering::Relaxed) != now_ms {
            entry.seen_ms.store(now_ms, Ordering::Relaxed);
        }
        let quota = &self.quotas[usize::from(entry.quota)];
        let cost = cost.min(quota.burst);
        let mut tat = entry.tat.load(Ordering::Relaxed);
        loop {
            let Some(next) = admit(tat, now, cost, quota) else {
                let decision = rejected(tat, now, cost, quota);
                self.on_limited(key, entry, &decision);
                return (0, decision);
            };
            match entry
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.counters.admitted.increment(1);
                    if entry.limited.load(Ordering::Relaxed) {
                        entry.limited.store(false, Ordering::Relaxed);
                    }
                    return (cost, admitted(next, now, quota));
                }
                Err(current) => tat = current,
            }
        }
    }

    #[cold]
    fn on_limited(&self, key: &K, entry: &Entry, decision: &Decision) {
        self.counters.record(false, self.shadow);
        if !entry.limited.swap(true, Ordering::Relaxed) {
            tracing::info!(
                policy = self.name,
                key = ?key,
                shadow = self.shadow,
                retry_after = ?decision.retry_after(),
                "rate limit reached for key"
            );
        }
    }

    /// Makes room in a full shard: expired states first, then the least
    /// recently seen eighth. Batching keeps a key flood at O(1) amortized.
    #[cold]
    fn evict(&self, map: &mut HashMap<K, Entry, RandomState>, now: u64) {
        let before = map.len();
        map.retain(|_, entry| entry.tat.load(Ordering::Relaxed) > now);
        let target = self.shard_cap - (self.shard_cap / 8).max(1);
        if map.len() > target {
            let now_ms = (now / NANOS_PER_MILLI) as u32;
            let age = |entry: &Entry| now_ms.wrapping_sub(entry.seen_ms.load(Ordering::Relaxed));
            let mut ages: Vec<u32> = map.values().map(age).collect();
            let excess = map.len() - target;
            // The `excess` oldest entries have an age >= the excess-th largest.
            let (_, threshold, _) = ages.select_nth_unstable_by(excess - 1, |a, b| b.cmp(a));
            let threshold = *threshold;
            let mut budget = excess;
            map.retain(|_, entry| {
                if budget > 0 && age(entry) >= threshold {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let removed = before - map.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        self.evicted.increment(removed as u64);
    }

    /// Gives cells back to `key` (another policy rejected the request).
    pub(crate) fn refund(&self, key: &K, cost: u32) {
        let shard = self.shard(key);
        let map = shard.map.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get(key) {
            let increment = self.quotas[usize::from(entry.quota)].emission * u64::from(cost);
            let _ = entry
                .tat
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    Some(tat.saturating_sub(increment))
                });
        }
    }
}

impl<K> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("keys", &self.len.load(Ordering::Relaxed))
            .field("capacity", &(self.shard_cap * self.shards.len()))
            .field("shards", &self.shards.len())
            .field("overrides", &self.overrides.len())
            .field("shadow", &self.shadow)
            .finish()
    }
}
