//! The shared breaker: state machine, permits and the control handle.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::classify::Outcome;
use crate::config::{Config, FailureMode};
use crate::counts::WindowCounts;
use crate::decide;
use crate::error::Rejected;
use crate::metrics::Metrics;
use crate::state::{Reason, State, Transition};
use crate::sync::{AtomicU32, AtomicU64, Mutex};
use crate::window::Window;
use crate::word::{generation_of, pack, probes_word, state_of};

/// A circuit breaker: the shared state and the handle to control it.
///
/// Cloning is cheap and every clone (and every service built from a layer
/// holding it) shares one breaker. Use it directly with
/// [`try_acquire`](Self::try_acquire), or wrap a service with
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer). See the crate docs for
/// an example.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    state: AtomicU64,
    /// Nanoseconds (on the clock) when an open breaker admits probes.
    open_until: AtomicU64,
    /// Nanoseconds when a half-open breaker gives up on its probes.
    half_open_until: AtomicU64,
    probes: AtomicU64,
    consecutive: AtomicU32,
    window: Window,
    config: Config,
    minimum_calls: u64,
    slow_nanos: Option<u64>,
    locked: Mutex<Locked>,
    pub(crate) notify: Arc<Notify>,
    metrics: Metrics,
}

/// What only transitions touch.
#[derive(Debug)]
struct Locked {
    /// Openings since the last clean close; drives the backoff.
    openings: u32,
    rng: u64,
    tally: WindowCounts,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A breaker with this configuration, starting closed.
    ///
    /// Metric handles are registered here: install the `metrics` recorder
    /// before building breakers.
    pub fn new(config: Config) -> Self {
        let minimum_calls = config.effective_minimum_calls();
        let slow_nanos = config.slow_call_duration.map(nanos);
        let metrics = Metrics::new(&config.name);
        metrics.state(State::Closed);
        Self {
            shared: Arc::new(Shared {
                state: AtomicU64::new(pack(State::Closed, 0)),
                open_until: AtomicU64::new(0),
                half_open_until: AtomicU64::new(0),
                probes: AtomicU64::new(0),
                consecutive: AtomicU32::new(0),
                window: Window::new(config.window),
                minimum_calls,
                slow_nanos,
                locked: Mutex::new(Locked {
                    openings: 0,
                    rng: config.seed.unwrap_or_else(random_seed),
                    tally: WindowCounts::default(),
                }),
                notify: Arc::new(Notify::new()),
                metrics,
                config,
            }),
        }
    }

    /// The name given in the configuration.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The current state.
    ///
    /// An open breaker whose wait has elapsed reports `Open` until the next
    /// call moves it to `HalfOpen` (transitions are lazy: no background task).
    pub fn state(&self) -> State {
        state_of(self.shared.state.load(Ordering::Acquire))
    }

    /// The totals the breaker decides on now, which depend on the state:
    ///
    /// - Closed, MetricsOnly: the sliding window.
    /// - Open, ForcedOpen, Disabled: the sliding window as it was when the
    ///   breaker left Closed (nothing records; a time window still expires
    ///   its buckets).
    /// - HalfOpen: the current half-open round's probes only (completed
    ///   probes, their failures and slow calls), starting from zero when the
    ///   round starts. The window from before the opening is not current
    ///   and is not reported.
    pub fn counts(&self) -> WindowCounts {
        let shared = &self.shared;
        let word = shared.state.load(Ordering::Acquire);
        if state_of(word) == State::HalfOpen {
            let locked = shared.lock();
            // The tally belongs to the round of `word` only while it lasts.
            if shared.state.load(Ordering::Acquire) == word {
                return locked.tally;
            }
        }
        shared.window.counts(shared.now())
    }

    /// Number of openings since the last clean close (what the backoff grows
    /// with).
    pub fn consecutive_openings(&self) -> u32 {
        self.shared.lock().openings
    }

    /// Asks to make one call.
    ///
    /// `Ok` carries a [`Permit`]: report the call's outcome with
    /// [`Permit::record`]; dropping it unreported counts as a cancellation
    /// (neither success nor failure; a probe slot is given back).
    ///
    /// # Errors
    ///
    /// [`Rejected`] when the breaker is open, forced open, or half-open with
    /// every probe slot taken.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.acquire(true)
    }

    /// [`try_acquire`](Self::try_acquire), counting a rejection in the
    /// metrics only when `count` (a service waiting in `poll_ready` asks
    /// repeatedly and rejects nothing).
    #[inline]
    pub(crate) fn acquire(&self, count: bool) -> Result<Permit, Rejected> {
        // The closed fast path, small enough to inline into the service.
        let word = self.shared.state.load(Ordering::Acquire);
        if state_of(word) == State::Closed && self.shared.slow_nanos.is_none() {
            return Ok(Permit::new(Some(self.shared.clone()), word, 0));
        }
        self.acquire_slow(count)
    }

    #[inline(never)]
    fn acquire_slow(&self, count: bool) -> Result<Permit, Rejected> {
        let shared = &self.shared;
        let rejected = || {
            if count {
                shared.metrics.rejected.increment(1);
            }
        };
        loop {
            let word = shared.state.load(Ordering::Acquire);
            match state_of(word) {
                State::Closed | State::MetricsOnly => {
                    let start = if shared.slow_nanos.is_some() {
                        shared.now()
                    } else {
                        0
                    };
                    return Ok(Permit::new(Some(self.shared.clone()), word, start));
                }
                State::Disabled => return Ok(Permit::new(None, word, 0)),
                State::ForcedOpen => {
                    rejected();
                    return Err(Rejected::ForcedOpen);
                }
                State::Open => {
                    let now = shared.now();
                    let until = shared.open_until.load(Ordering::Acquire);
                    if now < until {
                        rejected();
                        return Err(Rejected::Open {
                            retry_after: Duration::from_nanos(until - now),
                        });
                    }
                    shared.transition(word, State::HalfOpen, Reason::WaitElapsed, None, now);
                }
                State::HalfOpen => {
                    let now = shared.now();
                    let until = shared.half_open_until.load(Ordering::Acquire);
                    if now >= until {
                        shared.transition(word, State::Open, Reason::HalfOpenTimeout, None, now);
                        continue;
                    }
                    if shared.take_probe(generation_of(word)) {
                        return Ok(Permit::new(Some(self.shared.clone()), word, now));
                    }
                    if shared.state.load(Ordering::Acquire) != word {
                        continue;
                    }
                    rejected();
                    let left = Duration::from_nanos(until - now);
                    return Err(Rejected::HalfOpenSaturated {
                        retry_after: left.min(shared.config.wait_duration),
                    });
                }
            }
        }
    }

    /// Forces the breaker open: every call is rejected until
    /// [`reset`](Self::reset) (or another forcing call).
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Disables the breaker: every call passes, nothing is recorded.
    pub fn disable(&self) {
        self.shared.force(State::Disabled);
    }

    /// Records outcomes (rates and metrics stay live) but never opens.
    pub fn metrics_only(&self) {
        self.shared.force(State::MetricsOnly);
    }

    /// Back to closed with an empty window and the backoff reset.
    pub fn reset(&self) {
        self.shared.force(State::Closed);
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.shared.notify
    }

    /// Whether nothing but this handle refers to the breaker (no other
    /// handle, no permit, no call in flight) and it is closed: what a keyed
    /// set may evict without losing anything that matters.
    pub(crate) fn is_idle_and_closed(&self) -> bool {
        Arc::strong_count(&self.shared) == 1 && self.state() == State::Closed
    }

    /// Whether `permit` was admitted under the current state word: a permit
    /// reserved before any transition since (the breaker opened, was reset,
    /// or a half-open round ended) is stale and must not admit a call.
    #[inline]
    pub(crate) fn is_current(&self, permit: &Permit) -> bool {
        self.shared.state.load(Ordering::Acquire) == permit.word
    }

    /// Whether a call made now would be admitted by state alone, without
    /// taking a probe slot (used by the waiting readiness mode).
    pub(crate) fn is_closed_like(&self) -> bool {
        matches!(
            self.state(),
            State::Closed | State::MetricsOnly | State::Disabled
        )
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl Shared ===

impl Shared {
    #[inline]
    fn now(&self) -> u64 {
        nanos(self.config.clock.now())
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = Locked> + '_ {
        // The lock guards plain counters that are consistent after every
        // statement; a panic elsewhere cannot leave them torn.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_probe(&self, generation: u64) -> bool {
        let limit = u64::from(self.config.half_open_probes);
        let mut current = self.probes.load(Ordering::Acquire);
        loop {
            if current >> 32 != generation & 0xFFFF_FFFF || current & 0xFFFF_FFFF >= limit {
                return false;
            }
            match self.probes.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut current = self.probes.load(Ordering::Acquire);
        loop {
            if current >> 32 != generation & 0xFFFF_FFFF || current & 0xFFFF_FFFF == 0 {
                return;
            }
            match self.probes.compare_exchange_weak(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // A slot is free: wake services waiting in `poll_ready`.
        self.notify.notify_waiters();
    }

    fn force(&self, to: State) {
        let event = {
            let mut locked = self.lock();
            let from = self.state.load(Ordering::Acquire);
            self.apply(&mut locked, from, to, Reason::Manual, None, self.now())
        };
        self.emit(event);
    }

    /// Moves from `expected` to `to` unless another thread changed the state
    /// first. Returns whether this call made the transition.
    fn transition(
        &self,
        expected: u64,
        to: State,
        reason: Reason,
        counts: Option<WindowCounts>,
        now: u64,
    ) -> bool {
        let event = {
            let mut locked = self.lock();
            if self.state.load(Ordering::Acquire) != expected {
                return false;
            }
            self.apply(&mut locked, expected, to, reason, counts, now)
        };
        self.emit(event);
        true
    }

    /// Applies a transition under the lock; the caller emits the event after
    /// releasing it.
    fn apply(
        &self,
        locked: &mut Locked,
        from: u64,
        to: State,
        reason: Reason,
        counts: Option<WindowCounts>,
        now: u64,
    ) -> Transition {
        let generation = generation_of(from) + 1;
        let mut wait = None;
        match to {
            State::Open => {
                locked.openings = locked.openings.saturating_add(1);
                let w = self.backoff(locked);
                self.open_until
                    .store(now.saturating_add(nanos(w)), Ordering::Release);
                wait = Some(w);
            }
            State::HalfOpen => {
                locked.tally = WindowCounts::default();
                self.half_open_until.store(
                    now.saturating_add(nanos(self.config.max_half_open_duration)),
                    Ordering::Release,
                );
                self.probes
                    .store(probes_word(generation, 0), Ordering::Release);
            }
            State::Closed | State::MetricsOnly => {
                // Recorders admitted under the previous word drop their
                // outcome once they see the new one, but one that checked
                // just before may still be recording (when leaving Closed or
                // MetricsOnly by hand): `clear` swaps slots out, so that
                // record is cleared or kept whole, never half-counted.
                self.window.clear();
                self.consecutive.store(0, Ordering::Release);
                if to == State::Closed {
                    locked.openings = 0;
                }
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.state.store(pack(to, generation), Ordering::Release);
        Transition {
            name: self.config.name.clone(),
            from: state_of(from),
            to,
            reason,
            counts,
            wait,
        }
    }

    /// The wait of the current opening (see [`decide::backoff`]), with this
    /// breaker's jitter draw.
    fn backoff(&self, locked: &mut Locked) -> Duration {
        let unit = (splitmix64(&mut locked.rng) >> 11) as f64 / (1u64 << 53) as f64;
        decide::backoff(&self.config, locked.openings, unit)
    }

    fn emit(&self, t: Transition) {
        self.metrics.state(t.to);
        self.metrics.transition(t.from, t.to);
        let (rate, slow_rate, calls) = match t.counts {
            Some(c) => (c.failure_rate(), c.slow_call_rate(), c.calls),
            None => (0.0, 0.0, 0),
        };
        let wait_ms = t.wait.map_or(0, |w| w.as_millis() as u64);
        if matches!(t.to, State::Open | State::ForcedOpen) {
            tracing::warn!(
                target: "palisade_breaker",
                breaker = %t.name, from = %t.from, to = %t.to, reason = %t.reason,
                failure_rate = rate, slow_call_rate = slow_rate, calls, wait_ms,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                target: "palisade_breaker",
                breaker = %t.name, from = %t.from, to = %t.to, reason = %t.reason,
                failure_rate = rate, slow_call_rate = slow_rate, calls,
                "circuit breaker state changed"
            );
        }
        if let Some(callback) = &self.config.on_transition {
            callback(&t);
        }
        self.notify.notify_waiters();
    }

    fn classify_timing(&self, start: u64, outcome: Outcome, need_now: bool) -> (u64, bool, bool) {
        let now = if self.slow_nanos.is_some() || need_now {
            self.now()
        } else {
            0
        };
        let slow = self
            .slow_nanos
            .is_some_and(|limit| now.saturating_sub(start) >= limit);
        (now, outcome == Outcome::Failure, slow)
    }

    fn count_outcome(&self, outcome: Outcome, slow: bool) {
        match outcome {
            Outcome::Success => self.metrics.success.increment(1),
            Outcome::Failure => self.metrics.failure.increment(1),
            Outcome::Ignored => self.metrics.ignored.increment(1),
        }
        if slow {
            self.metrics.slow.increment(1);
        }
    }

    /// The closed-state hot path: atomics only; the lock is taken only if
    /// this outcome opens the breaker.
    #[inline(never)]
    fn on_closed_outcome(&self, word: u64, start: u64, outcome: Outcome) {
        if outcome == Outcome::Ignored {
            self.count_outcome(outcome, false);
            return;
        }
        let (now, failure, slow) = self.classify_timing(start, outcome, self.window.needs_time());
        self.count_outcome(outcome, slow);
        if self.state.load(Ordering::Acquire) != word {
            // Admitted in a period that has ended: its outcome describes the
            // past and must not count in the current window.
            return;
        }
        let counts = self.window.record(now, failure, slow);
        if state_of(word) == State::MetricsOnly {
            return;
        }
        let reason = match self.config.failure_mode {
            FailureMode::Consecutive { failures: limit } => {
                let run = if failure {
                    self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
                } else {
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Release);
                    }
                    0
                };
                if run >= limit {
                    Some(Reason::ConsecutiveFailures)
                } else {
                    counts.and_then(|c| self.rate_reason(c, None))
                }
            }
            FailureMode::Rate { threshold } => {
                counts.and_then(|c| self.rate_reason(c, Some(threshold)))
            }
        };
        if let Some(reason) = reason {
            let counts = Some(self.window.counts(now));
            self.transition(word, State::Open, reason, counts, self.now());
        }
    }

    fn rate_reason(&self, c: WindowCounts, failure_threshold: Option<f64>) -> Option<Reason> {
        let slow_threshold = self
            .slow_nanos
            .map(|_| self.config.slow_call_rate_threshold);
        decide::rate_reason(c, self.minimum_calls, failure_threshold, slow_threshold)
    }

    /// A probe's outcome: rare, so it is tallied under the lock, which also
    /// makes the decision atomic with the tally.
    #[inline(never)]
    fn on_probe_outcome(&self, word: u64, start: u64, outcome: Outcome) {
        if outcome == Outcome::Ignored {
            self.count_outcome(outcome, false);
            self.release_probe(generation_of(word));
            return;
        }
        let (now, failure, slow) = self.classify_timing(start, outcome, true);
        self.count_outcome(outcome, slow);
        let event = {
            let mut locked = self.lock();
            if self.state.load(Ordering::Acquire) != word {
                return;
            }
            let tally = &mut locked.tally;
            tally.calls += 1;
            tally.failures += u64::from(failure);
            tally.slow_calls += u64::from(slow);
            let tally = *tally;
            self.probe_decision(tally)
                .map(|(to, reason)| self.apply(&mut locked, word, to, reason, Some(tally), now))
        };
        if let Some(event) = event {
            self.emit(event);
        }
    }

    fn probe_decision(&self, t: WindowCounts) -> Option<(State, Reason)> {
        let slow_threshold = self
            .slow_nanos
            .map(|_| self.config.slow_call_rate_threshold);
        decide::probe_decision(
            t,
            self.config.half_open_probes,
            self.config.failure_mode,
            slow_threshold,
        )
    }
}

/// A per-breaker random seed: std's `RandomState` keys are random per
/// process and advance per instance.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// === impl Permit ===

/// Permission to make one call; see [`Breaker::try_acquire`].
///
/// Report the outcome with [`record`](Self::record). Dropping a permit
/// without recording counts the call as cancelled: it is not recorded, and a
/// half-open probe's slot is given back.
#[must_use = "a permit records nothing unless its outcome is reported"]
pub struct Permit {
    shared: Option<Arc<Shared>>,
    word: u64,
    start: u64,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("state", &state_of(self.word))
            .finish_non_exhaustive()
    }
}

impl Permit {
    #[inline]
    fn new(shared: Option<Arc<Shared>>, word: u64, start: u64) -> Self {
        Self {
            shared,
            word,
            start,
        }
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        state_of(self.word)
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.state() == State::HalfOpen
    }

    /// Reports the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            match state_of(self.word) {
                State::HalfOpen => shared.on_probe_outcome(self.word, self.start, outcome),
                _ => shared.on_closed_outcome(self.word, self.start, outcome),
            }
        }
    }

    /// Gives a reserved permit back without counting a call: a stale
    /// reservation never made one, so it is not a cancellation either.
    pub(crate) fn discard(mut self) {
        if let Some(shared) = self.shared.take()
            && state_of(self.word) == State::HalfOpen
        {
            shared.release_probe(generation_of(self.word));
        }
    }

    /// Shorthand for `record(Outcome::Success)`.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Shorthand for `record(Outcome::Failure)`.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.metrics.cancelled.increment(1);
            if state_of(self.word) == State::HalfOpen {
                shared.release_probe(generation_of(self.word));
            }
        }
    }
}

#[cfg(all(test, palisade_loom))]
mod loom_tests;
