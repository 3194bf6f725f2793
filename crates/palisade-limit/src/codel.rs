//! CoDel's decision, after folly's adaptive CoDel: is a queue *standing*?
//!
//! A queue that empties now and then is absorbing bursts, which is its job;
//! a queue whose *shortest* wait over a whole interval stayed above the
//! target is standing: it only adds delay. While a queue stands, the limiter
//! serves it newest-first (adaptive LIFO: the newest waiter is the likeliest
//! to still have a caller) and sheds waiters that have waited more than
//! twice the target, instead of letting them wait out the maximum wait.
//!
//! Pure arithmetic on nanosecond timestamps; the queue calls it under its
//! lock.

/// The standing-queue detector.
#[derive(Debug, Clone)]
pub(crate) struct Codel {
    target: u64,
    interval: u64,
    /// When the current interval ends.
    interval_end: u64,
    /// The shortest sojourn seen in the current interval (`u64::MAX`: none).
    min_sojourn: u64,
    standing: bool,
}

impl Codel {
    /// A detector with `target` and `interval` in nanoseconds.
    pub(crate) fn new(target: u64, interval: u64) -> Self {
        Self {
            target,
            interval,
            interval_end: 0,
            min_sojourn: u64::MAX,
            standing: false,
        }
    }

    /// A waiter leaves the queue for service at `now` after waiting
    /// `sojourn`.
    pub(crate) fn on_dequeue(&mut self, now: u64, sojourn: u64) {
        self.roll(now);
        self.min_sojourn = self.min_sojourn.min(sojourn);
    }

    /// Closes the interval if it is over: the queue stands for the next one
    /// if the shortest sojourn of this one stayed above the target. An
    /// interval in which nobody left the queue says nothing new, so the
    /// verdict stands only while waiters keep leaving late.
    pub(crate) fn roll(&mut self, now: u64) {
        if now < self.interval_end {
            return;
        }
        self.standing = self.min_sojourn != u64::MAX && self.min_sojourn > self.target;
        self.min_sojourn = u64::MAX;
        self.interval_end = now.saturating_add(self.interval);
    }

    /// Whether the queue is standing (serve newest-first, shed early).
    pub(crate) fn standing(&self) -> bool {
        self.standing
    }

    /// How long a waiter may wait before it is shed: twice the target while
    /// the queue stands, else `max_wait`.
    pub(crate) fn shed_after(&self, max_wait: u64) -> u64 {
        if self.standing {
            self.target.saturating_mul(2).min(max_wait)
        } else {
            max_wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_queue_that_drains_below_the_target_does_not_stand() {
        let mut c = Codel::new(5 * MS, 100 * MS);
        c.on_dequeue(0, 0);
        for t in 1..20 {
            // mostly long waits, but one short one per interval
            c.on_dequeue(t * 10 * MS, if t % 10 == 0 { MS } else { 50 * MS });
        }
        c.roll(200 * MS);
        assert!(!c.standing());
        assert_eq!(c.shed_after(1000 * MS), 1000 * MS);
    }

    #[test]
    fn a_queue_whose_shortest_wait_stays_above_the_target_stands() {
        let mut c = Codel::new(5 * MS, 100 * MS);
        c.on_dequeue(0, 6 * MS); // first interval opens at 0
        for t in 1..=10 {
            c.on_dequeue(t * 10 * MS, 6 * MS);
        }
        // the interval [0, 100ms) closed at 100ms with a minimum of 6ms
        assert!(c.standing());
        assert_eq!(c.shed_after(1000 * MS), 10 * MS);
        assert_eq!(c.shed_after(8 * MS), 8 * MS);
        // an interval with a short wait ends it
        c.on_dequeue(150 * MS, MS);
        c.roll(200 * MS);
        assert!(!c.standing());
    }

    #[test]
    fn an_interval_without_departures_ends_standing() {
        let mut c = Codel::new(5 * MS, 100 * MS);
        c.on_dequeue(0, 50 * MS);
        c.on_dequeue(100 * MS, 50 * MS);
        assert!(c.standing());
        // [100ms, 200ms) had a late departure: still standing
        c.roll(200 * MS);
        assert!(c.standing());
        // [200ms, 300ms) had none
        c.roll(300 * MS);
        assert!(!c.standing());
    }
}
