//! The direct (unkeyed) limiter: one TAT word, updated lock-free.

use std::sync::atomic::Ordering;

use crate::sync::{AtomicBool, AtomicU64};

use crate::{
    Clock, Decision, Quota,
    error::InsufficientCapacity,
    metrics::Counters,
    quota::{admit, admitted, rejected},
};

/// The theoretical arrival time on a cache line of its own, so the CAS traffic
/// of contending threads does not also evict the read-only quota and clock.
#[derive(Debug, Default)]
#[repr(align(64))]
struct State {
    tat: AtomicU64,
    /// Set while the limiter is rejecting, so only the first rejection after
    /// an admission emits a tracing event.
    limited: AtomicBool,
}

/// One shared GCRA limit (no key): a global limit, or a client's own budget.
///
/// The whole state is one `AtomicU64` (the theoretical arrival time) updated
/// with compare-and-swap: no lock, no background refill task, no allocation
/// per check. Share it by putting it in a [`RateLimitLayer`](crate::RateLimitLayer)
/// (which holds it in an `Arc`) or in your own `Arc`.
///
/// ```
/// use palisade_ratelimit::{Limiter, Quota};
///
/// let limiter = Limiter::new(Quota::per_second(2)?);
/// assert!(limiter.check().allowed());
/// assert!(limiter.check().allowed());
/// let third = limiter.check();
/// assert!(!third.allowed());
/// assert!(third.retry_after() > std::time::Duration::ZERO);
/// # Ok::<(), palisade_ratelimit::QuotaError>(())
/// ```
#[derive(Debug)]
pub struct Limiter {
    state: State,
    quota: Quota,
    clock: Clock,
    name: &'static str,
    shadow: bool,
    counters: Counters,
}

/// Builds a [`Limiter`]; see [`Limiter::builder`].
#[derive(Debug)]
pub struct LimiterBuilder {
    quota: Quota,
    clock: Option<Clock>,
    name: &'static str,
    shadow: bool,
}

impl LimiterBuilder {
    /// The policy name used in metrics labels and the `RateLimit` header fields
    /// (default `"global"`).
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

    /// Builds the limiter, registering its metrics.
    pub fn build(self) -> Limiter {
        Limiter {
            state: State::default(),
            quota: self.quota,
            clock: self.clock.unwrap_or_default(),
            name: self.name,
            shadow: self.shadow,
            counters: Counters::new(self.name),
        }
    }
}

// === impl Limiter ===

impl Limiter {
    /// A limiter named `"global"` on the fast clock.
    pub fn new(quota: Quota) -> Self {
        Self::builder(quota).build()
    }

    /// A builder for the name, shadow mode and clock.
    pub fn builder(quota: Quota) -> LimiterBuilder {
        LimiterBuilder {
            quota,
            clock: None,
            name: "global",
            shadow: false,
        }
    }

    /// Asks for one cell.
    #[inline]
    pub fn check(&self) -> Decision {
        self.decide(1)
    }

    /// Asks for `cost` cells at once; all or nothing.
    ///
    /// A cost of zero is admitted without consuming anything (a peek).
    pub fn check_n(&self, cost: u32) -> Result<Decision, InsufficientCapacity> {
        if cost > self.quota.burst {
            return Err(InsufficientCapacity {
                burst: self.quota.burst,
            });
        }
        Ok(self.decide(cost))
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

    /// The limiter's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    #[inline(always)]
    fn decide(&self, cost: u32) -> Decision {
        let now = self.clock.now_nanos();
        // Relaxed is enough: the TAT word is the whole state and publishes
        // nothing else; the CAS alone orders the competing updates.
        let mut tat = self.state.tat.load(Ordering::Relaxed);
        loop {
            let Some(next) = admit(tat, now, cost, &self.quota) else {
                let decision = rejected(tat, now, cost, &self.quota);
                self.on_limited(&decision);
                return decision;
            };
            match self.state.tat.compare_exchange_weak(
                tat,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.counters.admitted.increment(1);
                    if self.state.limited.load(Ordering::Relaxed) {
                        self.state.limited.store(false, Ordering::Relaxed);
                    }
                    return admitted(next, now, &self.quota);
                }
                Err(current) => tat = current,
            }
        }
    }

    #[cold]
    fn on_limited(&self, decision: &Decision) {
        self.counters.record(false, self.shadow);
        if !self.state.limited.swap(true, Ordering::Relaxed) {
            tracing::info!(
                policy = self.name,
                shadow = self.shadow,
                retry_after = ?decision.retry_after(),
                "rate limit reached"
            );
        }
    }

    /// Books the next `cost` cells even if they lie in the future, and returns
    /// how long until they are due (wait mode). Every caller books a distinct
    /// slot, so waiters wake one at a time at their own deadlines. A booking
    /// due more than `max_wait` nanoseconds from now is not made: the
    /// rejecting decision is returned instead.
    pub(crate) fn reserve(&self, cost: u32, max_wait: u64) -> Result<u64, Decision> {
        let now = self.clock.now_nanos();
        let increment = self.quota.emission * u64::from(cost);
        let tolerance = self.quota.tolerance();
        let mut tat = self.state.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + increment;
            let wait = (next - now).saturating_sub(tolerance);
            if wait > max_wait {
                let decision = rejected(tat, now, cost, &self.quota);
                self.on_limited(&decision);
                return Err(decision);
            }
            match self.state.tat.compare_exchange_weak(
                tat,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(wait),
                Err(current) => tat = current,
            }
        }
    }

    /// Counts a booked cell that a request used.
    pub(crate) fn count_admitted(&self) {
        self.counters.admitted.increment(1);
    }

    /// Gives `cost` cells back: a reservation dropped unused, or a request
    /// another policy rejected after this one admitted it.
    pub(crate) fn refund(&self, cost: u32) {
        let increment = self.quota.emission * u64::from(cost);
        // Never fails: the closure always returns Some.
        let _ = self
            .state
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(increment))
            });
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests;
