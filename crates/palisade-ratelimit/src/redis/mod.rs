//! Redis backend (feature `redis`): one limit shared by a fleet.
//!
//! Several gateway processes check the same keys in one Redis server, so a
//! quota of 100/s per client is 100/s across the fleet, not per process.
//!
//! - **Atomic GCRA in Redis**: a Lua script (sent once, then called by
//!   `EVALSHA`; reloaded automatically when Redis answers `NOSCRIPT`, for
//!   example after a restart) reads and updates the key's TAT. It takes the
//!   time from Redis's own `TIME`, so the fleet's clocks never matter. Each key
//!   carries a TTL equal to the time until it is fully replenished, so Redis
//!   memory holds only keys that are actually limiting something.
//! - **Local fast path**: a key Redis rejected is remembered until its
//!   retry-after has passed and rejected locally meanwhile, without a round
//!   trip (an abusive client costs one Redis call per retry interval, not per
//!   request). The memo is bounded by [`RedisLimiterBuilder::local_keys`].
//! - **Time budget and fail policy**: each check that goes to Redis must
//!   finish within [`RedisLimiterBuilder::budget`] (default 50 ms); on timeout,
//!   error or disconnection the [`FailPolicy`] decides (default
//!   [`FailPolicy::Open`]: admit) and the failure is counted in
//!   [`palisade_ratelimit_backend_errors_total`](crate::metrics::BACKEND_ERRORS).
//! - **One multiplexed connection** (redis-rs `ConnectionManager`): concurrent
//!   checks are pipelined on it instead of opening connections, and it
//!   reconnects on its own after Redis restarts; no process restart needed.
//!
//! Time resolution in Redis is one microsecond, so the emission interval
//! (`period / rate`) must be at least 1 µs.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade_ratelimit::Quota;
//! use palisade_ratelimit::redis::{FailPolicy, RedisLimiter};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RedisLimiter::builder("redis://127.0.0.1:6379/", Quota::per_second(100)?)
//!     .name("per-ip")
//!     .budget(Duration::from_millis(20))
//!     .fail(FailPolicy::Open)
//!     .build()?;
//! let decision = limiter.check("192.0.2.7").await;
//! assert!(decision.allowed());
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "http")]
mod service;

#[cfg(feature = "http")]
pub use service::{RedisRateLimit, RedisRateLimitLayer, ResponseFuture};

use std::{
    collections::HashMap,
    error::Error,
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics::Counter;
use redis::{Client, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};

use crate::{
    Clock, Decision, InsufficientCapacity, Quota, QuotaError,
    metrics::{BACKEND_ERRORS, Counters},
};

/// GCRA in microseconds on Redis time. Returns
/// `{allowed, slack, reset, retry}` (all in µs).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + emission * cost
local fill = new_tat - now
if fill <= tolerance then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor(fill / 1000) + 1)
  return {1, tolerance - fill, fill, 0}
end
local current = tat - now
return {0, tolerance - current, current, fill - tolerance}
";

/// What a check does when Redis cannot answer within the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailPolicy {
    /// Admit the request (availability first; the default).
    #[default]
    Open,
    /// Reject the request with a retry-after of one second (protection first).
    Closed,
}

/// Building a [`RedisLimiter`] failed.
#[derive(Debug)]
pub enum RedisSetupError {
    /// The quota cannot be represented in Redis (`field` names why).
    Quota(QuotaError),
    /// The Redis URL or client configuration is invalid.
    Redis(redis::RedisError),
}

impl fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quota(e) => e.fmt(f),
            Self::Redis(e) => write!(f, "invalid redis configuration: {e}"),
        }
    }
}

impl Error for RedisSetupError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Quota(e) => Some(e),
            Self::Redis(e) => Some(e),
        }
    }
}

/// Builds a [`RedisLimiter`]; see [`RedisLimiter::builder`].
#[derive(Debug)]
pub struct RedisLimiterBuilder {
    url: String,
    quota: Quota,
    name: &'static str,
    prefix: String,
    budget: Duration,
    fail: FailPolicy,
    local_keys: usize,
    shadow: bool,
}

impl RedisLimiterBuilder {
    /// Shadow mode (default off): decide and count, but the HTTP layer
    /// admits everything.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The policy name for metrics and header fields (default `"redis"`).
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Prefix of the Redis keys (default `"palisade:rl:"`); instances that
    /// should share a limit use the same prefix and quota.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most a check may wait for Redis (default 50 ms).
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// What to do when Redis does not answer in time (default [`FailPolicy::Open`]).
    pub fn fail(mut self, fail: FailPolicy) -> Self {
        self.fail = fail;
        self
    }

    /// How many limited keys the local fast path remembers (default 10,000;
    /// 0 disables it).
    pub fn local_keys(mut self, local_keys: usize) -> Self {
        self.local_keys = local_keys;
        self
    }

    /// Builds the limiter. It connects lazily (so a Redis that is down at
    /// start-up only means the fail policy applies until it is up); call it
    /// inside a tokio runtime.
    pub fn build(self) -> Result<RedisLimiter, RedisSetupError> {
        // Redis time has microsecond resolution.
        let emission_us = self.quota.emission / 1_000;
        if emission_us == 0 {
            return Err(RedisSetupError::Quota(QuotaError::Overflow {
                field: "rate",
            }));
        }
        if self.budget.is_zero() {
            return Err(RedisSetupError::Quota(QuotaError::Zero { field: "budget" }));
        }
        let client = Client::open(self.url.as_str()).map_err(RedisSetupError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.budget.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.budget.max(Duration::from_millis(100))))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(RedisSetupError::Redis)?;
        Ok(RedisLimiter {
            conn,
            script: Script::new(GCRA_LUA),
            quota: self.quota,
            emission_us,
            tolerance_us: emission_us * u64::from(self.quota.burst),
            name: self.name,
            prefix: self.prefix,
            budget: self.budget,
            fail: self.fail,
            local: Mutex::new(HashMap::new()),
            local_keys: self.local_keys,
            shadow: self.shadow,
            clock: Clock::fast(),
            counters: Counters::new(self.name),
            errors: metrics::counter!(BACKEND_ERRORS, "policy" => self.name, "fail" => match self.fail {
                FailPolicy::Open => "open",
                FailPolicy::Closed => "closed",
            }),
            error_count: AtomicU64::new(0),
        })
    }
}

/// A GCRA limit evaluated in Redis, shared by every process that uses the
/// same Redis, prefix and quota. See the [module docs](self).
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    quota: Quota,
    emission_us: u64,
    tolerance_us: u64,
    name: &'static str,
    prefix: String,
    budget: Duration,
    fail: FailPolicy,
    /// Keys known to be limited, with the local-clock nanosecond they may
    /// be admitted again.
    local: Mutex<HashMap<String, u64>>,
    local_keys: usize,
    shadow: bool,
    clock: Clock,
    counters: Counters,
    errors: Counter,
    error_count: AtomicU64,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("prefix", &self.prefix)
            .field("budget", &self.budget)
            .field("fail", &self.fail)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A builder for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>, quota: Quota) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            url: url.into(),
            quota,
            name: "redis",
            prefix: "palisade:rl:".to_owned(),
            budget: Duration::from_millis(50),
            fail: FailPolicy::Open,
            local_keys: 10_000,
            shadow: false,
        }
    }

    /// Asks for one cell for `key`.
    pub async fn check(&self, key: &str) -> Decision {
        self.decide(key, 1).await
    }

    /// Asks for `cost` cells for `key`; all or nothing.
    pub async fn check_n(&self, key: &str, cost: u32) -> Result<Decision, InsufficientCapacity> {
        if cost > self.quota.burst {
            return Err(InsufficientCapacity {
                burst: self.quota.burst,
            });
        }
        Ok(self.decide(key, cost).await)
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The policy name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the limiter is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Whether Redis answers a `PING` within the budget (for health checks,
    /// and to see the connection come back after a Redis restart).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        matches!(
            tokio::time::timeout(self.budget, ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }

    /// Checks that could not reach Redis within the budget, since start.
    pub fn backend_errors(&self) -> u64 {
        self.error_count.load(Ordering::Relaxed)
    }

    async fn decide(&self, key: &str, cost: u32) -> Decision {
        let now = self.clock.now_nanos();
        if let Some(decision) = self.local_hit(key, now) {
            self.counters.record(false, self.shadow);
            return decision;
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(format!("{}{}", self.prefix, key));
        invocation
            .arg(self.emission_us)
            .arg(self.tolerance_us)
            .arg(cost);
        let reply = tokio::time::timeout(
            self.budget,
            invocation.invoke_async::<(u8, i64, i64, i64)>(&mut conn),
        )
        .await;
        let decision = match reply {
            Ok(Ok((allowed, slack, reset, retry))) => Decision {
                allowed: allowed == 1,
                slack_nanos: slack.max(0) as u64 * 1_000,
                emission: self.emission_us * 1_000,
                reset_nanos: reset.max(0) as u64 * 1_000,
                retry_nanos: retry.max(0) as u64 * 1_000,
            },
            Ok(Err(error)) => return self.failed(&error as &dyn fmt::Display),
            Err(_elapsed) => return self.failed(&"timed out" as &dyn fmt::Display),
        };
        self.counters.record(decision.allowed, self.shadow);
        if !decision.allowed {
            self.remember(key, now + decision.retry_nanos);
        }
        decision
    }

    fn local_hit(&self, key: &str, now: u64) -> Option<Decision> {
        if self.local_keys == 0 {
            return None;
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *local.get(key)?;
        if until <= now {
            local.remove(key);
            return None;
        }
        Some(Decision {
            allowed: false,
            slack_nanos: 0,
            emission: self.emission_us * 1_000,
            reset_nanos: self.tolerance_us * 1_000,
            retry_nanos: until - now,
        })
    }

    fn remember(&self, key: &str, until: u64) {
        if self.local_keys == 0 {
            return;
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if local.len() >= self.local_keys {
            let now = self.clock.now_nanos();
            local.retain(|_, until| *until > now);
            if local.len() >= self.local_keys {
                // Still full of live entries: skip the memo (Redis stays the
                // authority), never grow past the bound.
                return;
            }
        }
        if local.insert(key.to_owned(), until).is_none() {
            tracing::info!(
                policy = self.name,
                key,
                "rate limit reached for key (redis)"
            );
        }
    }

    #[cold]
    fn failed(&self, error: &dyn fmt::Display) -> Decision {
        self.errors.increment(1);
        let previous = self.error_count.fetch_add(1, Ordering::Relaxed);
        if previous == 0 || previous.is_power_of_two() {
            tracing::warn!(
                policy = self.name,
                fail = ?self.fail,
                errors = previous + 1,
                %error,
                "redis rate limit check failed; applying the fail policy"
            );
        }
        match self.fail {
            FailPolicy::Open => {
                self.counters.record(true, false);
                Decision {
                    allowed: true,
                    slack_nanos: self.tolerance_us * 1_000,
                    emission: self.emission_us * 1_000,
                    reset_nanos: 0,
                    retry_nanos: 0,
                }
            }
            FailPolicy::Closed => {
                self.counters.record(false, false);
                Decision {
                    allowed: false,
                    slack_nanos: 0,
                    emission: self.emission_us * 1_000,
                    reset_nanos: self.tolerance_us * 1_000,
                    retry_nanos: 1_000_000_000,
                }
            }
        }
    }
}
