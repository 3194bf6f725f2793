//! Partitions: classes of requests with a guaranteed share of the limit.
//!
//! Each class `c` is guaranteed `floor(share_c × limit)` slots (at least one
//! when its share is above 0). A class within its guarantee is admitted
//! whenever the limit has room. A class beyond it *borrows*: it is admitted
//! only if the slots it takes leave every other **active** class its unused
//! guarantee, so a spike of one class cannot take the slots another class
//! is using. A class that has sent nothing for `idle_after` is idle, and
//! its whole share is borrowable. Classes are listed highest priority
//! first; under overload the classes beyond their guarantee (the spike) are
//! the ones refused.
//!
//! The total is exact (one compare-and-swap on the shared in-flight count);
//! the guarantees are kept between admissions that do not race, and two
//! racing admissions can at worst both borrow the same free slot's worth of
//! headroom, which the limit itself still bounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One class's configuration and counters.
#[derive(Debug)]
pub(crate) struct Class {
    pub(crate) name: &'static str,
    /// The guaranteed share, in millionths of the limit.
    share_ppm: u64,
    pub(crate) in_flight: AtomicUsize,
    /// Clock nanos of the last arrival (`0`: never), plus one so that an
    /// arrival at time 0 still counts.
    last_arrival: AtomicU64,
}

/// The configured classes.
#[derive(Debug)]
pub(crate) struct Classes {
    pub(crate) list: Box<[Class]>,
    idle_after: u64,
}

impl Classes {
    /// Classes from `(name, share)`; shares are validated by the builder
    /// (each in `0.0..=1.0`, summing to at most 1).
    pub(crate) fn new(classes: &[(&'static str, f64)], idle_after: u64) -> Self {
        Self {
            list: classes
                .iter()
                .map(|&(name, share)| Class {
                    name,
                    share_ppm: (share * 1e6).round() as u64,
                    in_flight: AtomicUsize::new(0),
                    last_arrival: AtomicU64::new(0),
                })
                .collect(),
            idle_after,
        }
    }

    /// The guaranteed slots of a class with `share_ppm` under `limit`.
    fn guarantee(share_ppm: u64, limit: usize) -> usize {
        if share_ppm == 0 {
            return 0;
        }
        let g = (limit as u128 * share_ppm as u128 / 1_000_000) as usize;
        g.max(1)
    }

    /// Whether a request of class `c` may take the slot it reserved, with
    /// `total` requests in flight (its reservation included) under `limit`,
    /// at `now`. Counts it in its class when admitted.
    pub(crate) fn admit(&self, c: usize, total: usize, limit: usize, now: u64) -> bool {
        let class = &self.list[c];
        class
            .last_arrival
            .store(now.saturating_add(1), Ordering::Relaxed);
        let mine = class.in_flight.load(Ordering::Relaxed);
        let ok = mine < Self::guarantee(class.share_ppm, limit) || {
            let held_for_others: usize = self
                .list
                .iter()
                .enumerate()
                .filter(|&(o, other)| o != c && self.active(other, now))
                .map(|(_, other)| {
                    Self::guarantee(other.share_ppm, limit)
                        .saturating_sub(other.in_flight.load(Ordering::Relaxed))
                })
                .sum();
            total.saturating_add(held_for_others) <= limit
        };
        if ok {
            class.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// A request of class `c` ended.
    pub(crate) fn release(&self, c: usize) {
        self.list[c].in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn active(&self, class: &Class, now: u64) -> bool {
        let last = class.last_arrival.load(Ordering::Relaxed);
        last != 0 && now.saturating_add(1).saturating_sub(last) < self.idle_after
            || class.in_flight.load(Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_class_within_its_guarantee_is_admitted_and_a_borrower_leaves_it_room() {
        // limit 10: critical is guaranteed 8, bulk 2.
        let classes = Classes::new(&[("critical", 0.8), ("bulk", 0.2)], S);
        // critical is active with 3 in flight
        for total in 1..=3 {
            assert!(classes.admit(0, total, 10, 0));
        }
        // bulk: its 2 guaranteed, then borrowing would eat critical's 5 unused
        assert!(classes.admit(1, 4, 10, 0));
        assert!(classes.admit(1, 5, 10, 0));
        assert!(!classes.admit(1, 6, 10, 0));
        assert_eq!(classes.list[1].in_flight.load(Ordering::Relaxed), 2);
        // critical keeps getting its slots
        for total in 6..=10 {
            assert!(classes.admit(0, total, 10, 0));
        }
        assert_eq!(classes.list[0].in_flight.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn an_idle_class_lends_its_whole_share() {
        let classes = Classes::new(&[("critical", 0.8), ("bulk", 0.2)], S);
        // critical never sent anything: bulk may use all 10
        for total in 1..=10 {
            assert!(classes.admit(1, total, 10, 5 * S), "total {total}");
        }
        // critical arrived a while ago, has nothing in flight, and went idle
        let classes = Classes::new(&[("critical", 0.8), ("bulk", 0.2)], S);
        assert!(classes.admit(0, 1, 10, 0));
        classes.release(0);
        for total in 1..=10 {
            assert!(classes.admit(1, total, 10, 2 * S), "total {total}");
        }
    }

    #[test]
    fn guarantees_round_down_but_a_positive_share_gets_one_slot() {
        assert_eq!(Classes::guarantee(100_000, 5), 1);
        assert_eq!(Classes::guarantee(500_000, 9), 4);
        assert_eq!(Classes::guarantee(0, 100), 0);
        assert_eq!(Classes::guarantee(1_000_000, 7), 7);
    }
}
