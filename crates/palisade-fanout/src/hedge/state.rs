//! The state every clone of one hedged service shares: the latency window,
//! the budget, the round-robin cursor and the counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::config::{Delay, HedgeConfig};
use super::window::{BudgetWindow, LatencyWindow};
use crate::metric_names;

/// Recompute a percentile delay at most this often by time...
const REFRESH: Duration = Duration::from_millis(100);
/// ... or after this many new samples, whichever comes first.
const REFRESH_SAMPLES: u32 = 64;

/// Totals since the hedger was created; see [`Hedger::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Requests (each one is a primary attempt).
    pub primaries: u64,
    /// Extra attempts sent.
    pub hedges: u64,
    /// Requests answered by an extra attempt.
    pub hedges_won: u64,
    /// Hedges wanted but refused by the budget.
    pub budget_exhausted: u64,
}

/// The shared state of a hedged service: latency window, budget, counters.
/// Cloning is cheap and shares it (see [`HedgeLayer::hedger`](super::HedgeLayer::hedger)).
#[derive(Debug, Clone)]
pub struct Hedger {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: HedgeConfig,
    latency: Mutex<Latency>,
    budget: Mutex<BudgetWindow>,
    pub(crate) cursor: AtomicUsize,
    exhausted: AtomicBool,
    primaries: AtomicU64,
    hedges: AtomicU64,
    won: AtomicU64,
    refused: AtomicU64,
    metrics: HedgeMetrics,
}

#[derive(Debug)]
struct Latency {
    window: LatencyWindow,
    cached: Option<Duration>,
    computed_at: Option<Instant>,
    since: u32,
}

#[derive(Debug)]
struct HedgeMetrics {
    primaries: Counter,
    hedges: Counter,
    won: Counter,
    exhausted: Counter,
    delay: Gauge,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic halfway through an update that
    // matters; a poisoned lock still holds consistent counts.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hedger {
    /// Shared state for `config`.
    pub fn new(config: HedgeConfig) -> Self {
        let now = Instant::now();
        let name = config.name;
        let metrics = HedgeMetrics {
            primaries: metrics::counter!(metric_names::HEDGE_PRIMARIES, "hedge" => name),
            hedges: metrics::counter!(metric_names::HEDGE_SENT, "hedge" => name),
            won: metrics::counter!(metric_names::HEDGE_WON, "hedge" => name),
            exhausted: metrics::counter!(metric_names::HEDGE_BUDGET_EXHAUSTED, "hedge" => name),
            delay: metrics::gauge!(metric_names::HEDGE_DELAY, "hedge" => name),
        };
        if let Delay::Fixed(d) = config.delay {
            metrics.delay.set(d.as_secs_f64());
        }
        Self {
            inner: Arc::new(Inner {
                latency: Mutex::new(Latency {
                    window: LatencyWindow::new(now, config.latency_window),
                    cached: None,
                    computed_at: None,
                    since: 0,
                }),
                budget: Mutex::new(BudgetWindow::new(
                    now,
                    config.budget_window,
                    config.max_extra_load,
                    config.min_hedges_per_sec,
                )),
                cursor: AtomicUsize::new(0),
                exhausted: AtomicBool::new(false),
                primaries: AtomicU64::new(0),
                hedges: AtomicU64::new(0),
                won: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                metrics,
                config,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HedgeConfig {
        &self.inner.config
    }

    /// Totals since creation.
    pub fn stats(&self) -> HedgeStats {
        let i = &self.inner;
        HedgeStats {
            primaries: i.primaries.load(Ordering::Relaxed),
            hedges: i.hedges.load(Ordering::Relaxed),
            hedges_won: i.won.load(Ordering::Relaxed),
            budget_exhausted: i.refused.load(Ordering::Relaxed),
        }
    }

    /// The delay a request started now would hedge after (`None`: no hedge,
    /// too few latency samples for a percentile).
    pub fn current_delay(&self) -> Option<Duration> {
        self.inner.delay(Instant::now())
    }
}

impl Inner {
    pub(crate) fn on_primary(&self, now: Instant) {
        self.primaries.fetch_add(1, Ordering::Relaxed);
        self.metrics.primaries.increment(1);
        lock(&self.budget).primary(now);
    }

    pub(crate) fn delay(&self, now: Instant) -> Option<Duration> {
        let q = match self.config.delay {
            Delay::Fixed(d) => return Some(d),
            Delay::Percentile(q) => q,
        };
        let mut l = lock(&self.latency);
        let stale = match l.computed_at {
            None => true,
            Some(at) => now >= at + REFRESH || l.since >= REFRESH_SAMPLES,
        };
        if stale {
            let delay = l.window.quantile(now, q, self.config.min_samples);
            l.cached = delay;
            l.computed_at = Some(now);
            l.since = 0;
            if let Some(d) = delay {
                self.metrics.delay.set(d.as_secs_f64());
            }
        }
        l.cached
    }

    pub(crate) fn record_latency(&self, now: Instant, latency: Duration) {
        if let Delay::Percentile(_) = self.config.delay {
            let mut l = lock(&self.latency);
            l.window.record(now, latency);
            l.since = l.since.saturating_add(1);
        }
    }

    /// Takes a hedge from the budget; counts and logs a refusal.
    pub(crate) fn try_hedge(&self, now: Instant) -> bool {
        let granted = lock(&self.budget).try_hedge(now);
        if granted {
            self.hedges.fetch_add(1, Ordering::Relaxed);
            self.metrics.hedges.increment(1);
            if self.exhausted.swap(false, Ordering::Relaxed) {
                tracing::info!(target: "palisade_fanout", hedge = self.config.name, "hedge budget available again");
            }
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.metrics.exhausted.increment(1);
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "palisade_fanout",
                    hedge = self.config.name,
                    max_extra_load = self.config.max_extra_load,
                    "hedge budget exhausted: hedging paused"
                );
            }
        }
        granted
    }

    pub(crate) fn on_hedge_won(&self) {
        self.won.fetch_add(1, Ordering::Relaxed);
        self.metrics.won.increment(1);
    }
}

/// Records an attempt's latency when dropped: at its completion, or at its
/// cancellation (then the time it had run, a lower bound of its latency).
#[derive(Debug)]
pub(crate) struct Timing {
    started: Instant,
    hedger: Arc<Inner>,
}

impl Timing {
    pub(crate) fn start(hedger: Arc<Inner>, started: Instant) -> Self {
        Self { started, hedger }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        let now = Instant::now();
        self.hedger
            .record_latency(now, now.saturating_duration_since(self.started));
    }
}
