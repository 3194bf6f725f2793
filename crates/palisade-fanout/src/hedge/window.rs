//! The two rotating windows hedging decides from: recent attempt latencies
//! (for the percentile delay) and recent primaries and hedges (for the
//! budget). Both split their window into [`SLICES`] slices; the oldest slice
//! is dropped as time moves on, so the window holds between
//! `(SLICES - 1) / SLICES` and all of the configured length.
//!
//! Each sits behind its own `Mutex`: recording is O(1) (a rotation check and
//! two increments) and the percentile scan runs at most once per refresh
//! interval, so the critical sections are a few nanoseconds long.

use std::time::Duration;

use tokio::time::Instant;

use super::histogram::{self, BUCKETS};

/// Slices per window.
pub(crate) const SLICES: usize = 10;

/// Slice bookkeeping shared by both windows: which slice is current.
#[derive(Debug)]
struct Ring {
    origin: Instant,
    slice: Duration,
    /// Index of the current slice since `origin`.
    epoch: u64,
}

impl Ring {
    fn new(origin: Instant, window: Duration) -> Self {
        Self {
            origin,
            slice: (window / SLICES as u32).max(Duration::from_micros(1)),
            epoch: 0,
        }
    }

    /// Advances to the slice of `now`; returns the slots to clear (each
    /// slice that became current since the last call, at most all of them).
    fn advance(&mut self, now: Instant) -> impl Iterator<Item = usize> + use<> {
        let elapsed = now.saturating_duration_since(self.origin);
        let epoch = (elapsed.as_nanos() / self.slice.as_nanos()) as u64;
        let from = self.epoch;
        self.epoch = self.epoch.max(epoch);
        let steps = (self.epoch - from).min(SLICES as u64);
        (0..steps).map(move |i| ((epoch - i) % SLICES as u64) as usize)
    }

    fn current(&self) -> usize {
        (self.epoch % SLICES as u64) as usize
    }
}

// === impl LatencyWindow ===

/// Attempt latencies over the window, in microseconds.
#[derive(Debug)]
pub(crate) struct LatencyWindow {
    ring: Ring,
    slices: Vec<Box<[u32]>>,
    slice_totals: [u64; SLICES],
    /// The sum of every slice, kept up to date so a percentile is one scan.
    sum: Box<[u32]>,
    total: u64,
}

impl LatencyWindow {
    pub(crate) fn new(origin: Instant, window: Duration) -> Self {
        Self {
            ring: Ring::new(origin, window),
            slices: (0..SLICES)
                .map(|_| vec![0; BUCKETS].into_boxed_slice())
                .collect(),
            slice_totals: [0; SLICES],
            sum: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }

    fn rotate(&mut self, now: Instant) {
        for slot in self.ring.advance(now) {
            if self.slice_totals[slot] == 0 {
                continue;
            }
            for (s, c) in self.sum.iter_mut().zip(self.slices[slot].iter_mut()) {
                *s -= *c;
                *c = 0;
            }
            self.total -= self.slice_totals[slot];
            self.slice_totals[slot] = 0;
        }
    }

    /// Records one attempt's latency.
    pub(crate) fn record(&mut self, now: Instant, latency: Duration) {
        self.rotate(now);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let b = histogram::bucket(micros);
        let slot = self.ring.current();
        self.slices[slot][b] += 1;
        self.sum[b] += 1;
        self.slice_totals[slot] += 1;
        self.total += 1;
    }

    /// The latency at quantile `q` over the window, if it holds at least
    /// `min_samples` samples.
    pub(crate) fn quantile(&mut self, now: Instant, q: f64, min_samples: u64) -> Option<Duration> {
        self.rotate(now);
        if self.total < min_samples.max(1) {
            return None;
        }
        histogram::quantile(&self.sum, self.total, q).map(Duration::from_micros)
    }

    /// Samples in the window.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.total
    }
}

// === impl BudgetWindow ===

/// Primaries and hedges over the budget window.
///
/// Invariant: within any window, hedges never exceed
/// `max_extra_load * primaries + min_per_sec * window` (Finagle's
/// `maxExtraLoad` with a floor), because a hedge is only counted, and sent,
/// while that allowance is at least one.
#[derive(Debug)]
pub(crate) struct BudgetWindow {
    ring: Ring,
    primaries: [u64; SLICES],
    hedges: [u64; SLICES],
    ratio: f64,
    floor: f64,
}

impl BudgetWindow {
    pub(crate) fn new(origin: Instant, window: Duration, ratio: f64, min_per_sec: f64) -> Self {
        Self {
            ring: Ring::new(origin, window),
            primaries: [0; SLICES],
            hedges: [0; SLICES],
            ratio,
            floor: min_per_sec * window.as_secs_f64(),
        }
    }

    fn rotate(&mut self, now: Instant) {
        for slot in self.ring.advance(now) {
            self.primaries[slot] = 0;
            self.hedges[slot] = 0;
        }
    }

    /// Counts a primary request (every request deposits into the budget).
    pub(crate) fn primary(&mut self, now: Instant) {
        self.rotate(now);
        self.primaries[self.ring.current()] += 1;
    }

    /// Takes one hedge from the budget, if it has one.
    pub(crate) fn try_hedge(&mut self, now: Instant) -> bool {
        self.rotate(now);
        let primaries: u64 = self.primaries.iter().sum();
        let hedges: u64 = self.hedges.iter().sum();
        let allowance = self.ratio * primaries as f64 + self.floor - hedges as f64;
        if allowance >= 1.0 {
            self.hedges[self.ring.current()] += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_window_forgets_old_slices() {
        let t0 = Instant::now();
        let mut w = LatencyWindow::new(t0, Duration::from_secs(10));
        for _ in 0..100 {
            w.record(t0, Duration::from_millis(100));
        }
        assert_eq!(w.len(), 100);
        let p = w.quantile(t0, 0.5, 1).unwrap();
        assert!(
            p >= Duration::from_micros(96_875) && p <= Duration::from_micros(103_125),
            "{p:?}"
        );
        // Still inside the window 9.9 s later.
        assert!(
            w.quantile(t0 + Duration::from_millis(9_900), 0.5, 1)
                .is_some()
        );
        // Gone once its slice rotated out.
        assert_eq!(w.quantile(t0 + Duration::from_secs(10), 0.5, 1), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn budget_allows_the_ratio_of_primaries_plus_the_floor() {
        let t0 = Instant::now();
        let mut b = BudgetWindow::new(t0, Duration::from_secs(10), 0.05, 0.0);
        for _ in 0..100 {
            b.primary(t0);
        }
        let granted = (0..100).filter(|_| b.try_hedge(t0)).count();
        assert_eq!(granted, 5);
        let mut floor = BudgetWindow::new(t0, Duration::from_secs(10), 0.0, 1.0);
        let granted = (0..100).filter(|_| floor.try_hedge(t0)).count();
        assert_eq!(granted, 10);
    }
}
